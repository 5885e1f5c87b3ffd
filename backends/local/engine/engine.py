"""`LLMEngine`: requests in, tokens out, one `step()` at a time; `AsyncLLMEngine` runs the steps
in a background thread for the HTTP server and the runtime.

A step: consult the KV retention policy on every lease, let the scheduler pick this step's
chunks (decodes and prefill chunks together), run the model once over the flattened batch,
register newly full blocks in the prefix cache, sample the sequences whose chunk reached their
end, detokenize, and finish those that hit a stop token, a stop string, max_tokens or the
context limit.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hetagent import policies
from hetagent.backends.local.engine.batch import ForwardBatch, SamplingParams, SequenceChunk
from hetagent.backends.local.engine.kv_cache import KVCacheManager, KVStats
from hetagent.backends.local.engine.request import Hints, Request, RequestOutput, Status
from hetagent.backends.local.engine.scheduler import Scheduler
from hetagent.policies.kv_retention import MemoryView

_EXPORT_MAGIC = b"HETAGENT-SEQ1"


@dataclass
class EngineCounters:
    """Monotonic totals since the engine started (Prometheus counters)."""

    prompt_tokens: int = 0  # prompt tokens of admitted requests (not of imported KV)
    generation_tokens: int = 0
    computed_tokens: int = 0  # tokens pushed through the model (prefill chunks + decodes)
    cached_prompt_tokens: int = 0  # prompt tokens served by the prefix cache
    preemptions: int = 0
    steps: int = 0
    finished: dict[str, int] = field(default_factory=dict)  # by finish reason


@dataclass(frozen=True)
class StepInfo:
    """What the last step ran (for tests and tracing)."""

    num_prefill_sequences: int
    num_decode_sequences: int
    num_tokens: int
    num_preempted: int


@dataclass(frozen=True)
class EngineMetrics:
    running: int
    waiting: int
    kv: KVStats
    counters: EngineCounters


class LLMEngine:
    def __init__(
        self,
        loaded: Any,  # models.LoadedModel
        *,
        kv_memory_mb: float = 256.0,
        num_blocks: int | None = None,
        block_size: int = 16,
        scheduling: str = "fcfs",
        kv_retention: str = "evict",
        kv_retention_options: dict[str, Any] | None = None,
        max_num_batched_tokens: int = 256,
        max_num_seqs: int = 32,
        clock: Callable[[], float] = time.monotonic,
        ignore_eos: bool = False,
    ) -> None:
        """`ignore_eos` makes every request run to max_tokens (as vLLM's ignore_eos; for
        benchmarks of decode throughput, not for serving)."""
        from hetagent.backends.local.engine.paged_cache import PagedCache

        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.config = loaded.config
        self.model_name: str = loaded.name
        self.clock = clock
        self.block_size = block_size
        dtype = self.model.dtype
        bytes_per_block = PagedCache.bytes_per_block(self.config, block_size, dtype)
        if num_blocks is None:
            num_blocks = int(kv_memory_mb * 2**20) // bytes_per_block
        if num_blocks < 2:
            raise ValueError(
                f"KV memory {kv_memory_mb} MiB holds {num_blocks} blocks of {block_size} tokens "
                f"({bytes_per_block} bytes each); give the engine more KV memory"
            )
        self.cache = PagedCache(self.config, num_blocks, block_size, dtype, self.model.device)
        retention = policies.get("kv_retention", kv_retention, **(kv_retention_options or {}))
        self.kv = KVCacheManager(self.cache, num_blocks, block_size, bytes_per_block, retention)
        self.scheduler = Scheduler(
            self.kv,
            policies.get("scheduling", scheduling),
            max_num_batched_tokens=max_num_batched_tokens,
            max_num_seqs=max_num_seqs,
        )
        self.max_model_len = min(self.config.max_context, num_blocks * block_size)
        self.requests: dict[str, Request] = {}
        self.counters = EngineCounters()
        self.last_step = StepInfo(0, 0, 0, 0)
        self._seq = itertools.count()
        self._stop_ids: set[int] = set()
        if not ignore_eos:
            self._stop_ids = set(self.tokenizer.stop_token_ids) | {self.tokenizer.eos_token_id}

    @classmethod
    def from_name(cls, name: str, **options: Any) -> LLMEngine:
        """Load a model by registry name, path or `dummy:<catalog id>` and build an engine."""
        from hetagent.backends.local.engine.models import load

        return cls(load(name), **options)

    # ---- requests ------------------------------------------------------------------------

    def prepare_request(
        self,
        prompt: str | list[int] | None = None,
        params: SamplingParams | None = None,
        hints: Hints | None = None,
        *,
        messages: list[dict[str, Any]] | None = None,
        request_id: str | None = None,
        keep_kv: bool = False,
    ) -> Request:
        """Tokenize and validate a request without touching the engine's state (safe to call
        from another thread); raises ValueError naming what to fix."""
        from hetagent.backends.local.engine.sampling import make_generator
        from hetagent.backends.local.engine.tokenizer import IncrementalDetokenizer

        params = params or SamplingParams()
        if (prompt is None) == (messages is None):
            raise ValueError("give either a prompt or chat messages")
        if messages is not None:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            token_ids = self.tokenizer.encode(text)
        elif isinstance(prompt, str):
            token_ids = self.tokenizer.encode(prompt, add_special_tokens=True)
        else:
            token_ids = [int(t) for t in prompt]  # type: ignore[union-attr]
            bad = [t for t in token_ids if not 0 <= t < self.config.vocab_size]
            if bad:
                raise ValueError(f"token ids {bad[:5]} are outside the vocabulary")
        if not token_ids:
            raise ValueError("the prompt is empty")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(
                f"the prompt has {len(token_ids)} tokens; this engine serves at most "
                f"{self.max_model_len - 1} prompt tokens (context {self.config.max_context}, "
                f"KV pool {self.kv.pool.num_blocks * self.block_size} tokens)"
            )
        return Request(
            request_id=request_id or uuid.uuid4().hex,
            prompt_token_ids=token_ids,
            params=params,
            hints=hints or Hints(),
            arrival=self.clock(),
            seq=next(self._seq),
            keep_kv=keep_kv,
            generator=make_generator(params),
            detokenizer=IncrementalDetokenizer(self.tokenizer, token_ids, params.stop),
            guide=self._guide(params),
        )

    def _guide(self, params: SamplingParams) -> Any:
        """A constrained-decoding guide for a request with a response schema (ValueError, naming
        the problem, for a schema that cannot guide decoding)."""
        if params.response_schema is None:
            return None
        from hetagent.backends.local.engine.guidance import JsonGuide

        return JsonGuide(self.tokenizer, params.response_schema)

    def enqueue(self, request: Request) -> str:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id} is already in use")
        self.requests[request.request_id] = request
        self.kv.turn_arrived(request, self.clock())
        self.scheduler.add(request)
        return request.request_id

    def add_request(
        self,
        prompt: str | list[int] | None = None,
        params: SamplingParams | None = None,
        hints: Hints | None = None,
        **options: Any,
    ) -> str:
        """Queue a prompt (text or token ids) or chat `messages=`; returns the request id."""
        return self.enqueue(self.prepare_request(prompt, params, hints, **options))

    def abort(self, request_id: str) -> None:
        request = self.requests.get(request_id)
        if request is not None and not request.finished:
            self._finish(request, "abort")
            self.requests.pop(request_id, None)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    # ---- the step ------------------------------------------------------------------------

    def memory_view(self) -> MemoryView:
        """The KV pool as the retention policy sees it."""
        return self.kv.memory_view(self.scheduler.blocked_blocks, len(self.scheduler.running))

    def step(self) -> list[RequestOutput]:
        """Run one engine step; returns what each scheduled request produced."""
        now = self.clock()
        self.kv.step(now, self.memory_view())
        sched = self.scheduler.schedule()
        self.counters.preemptions += len(sched.preempted)
        if not sched.scheduled:
            self.last_step = StepInfo(0, 0, 0, len(sched.preempted))
            return []
        for request in sched.admitted:
            self.counters.prompt_tokens += len(request.prompt_token_ids)
            self.counters.cached_prompt_tokens += request.num_cached_tokens
        chunks, decodes = [], 0
        for request, n in sched.scheduled:
            start = request.num_computed_tokens
            if n == 1 and request.output_token_ids and start == request.num_tokens - 1:
                decodes += 1
            chunks.append(
                SequenceChunk(
                    token_ids=request.all_token_ids[start : start + n],
                    start=start,
                    block_table=self.kv.block_table(request),
                )
            )
        batch = ForwardBatch.build(chunks, self.block_size)
        logits = self.model.forward(batch, self.cache)
        self.counters.steps += 1
        self.counters.computed_tokens += batch.token_ids.numel()
        self.last_step = StepInfo(
            len(chunks) - decodes, decodes, batch.token_ids.numel(), len(sched.preempted)
        )

        rows, sampled_requests = [], []
        for row, (request, n) in enumerate(sched.scheduled):
            request.num_computed_tokens += n
            request.num_forward_tokens += n
            self.kv.commit(request)
            if request.num_computed_tokens == request.num_tokens:
                rows.append(row)
                sampled_requests.append(request)
        outputs: list[RequestOutput] = []
        if sampled_requests:
            from hetagent.backends.local.engine.sampling import sample

            picked = logits[rows]
            for i, request in enumerate(sampled_requests):
                if request.guide is not None:  # only the tokens its schema allows here
                    request.guide.restrict(picked[i])
            tokens = sample(
                picked,
                [r.params for r in sampled_requests],
                [r.generator for r in sampled_requests],
            ).tolist()
            now = self.clock()
            for request, token in zip(sampled_requests, tokens, strict=True):
                if request.guide is not None and int(token) not in self._stop_ids:
                    request.guide.accept(int(token))
                outputs.append(self._append_token(request, int(token), now))
        return outputs

    def _append_token(self, request: Request, token: int, now: float) -> RequestOutput:
        request.output_token_ids.append(token)
        self.counters.generation_tokens += 1
        if request.first_token_time is None:
            request.first_token_time = now
        detok = request.detokenizer
        reason: str | None = None
        if token in self._stop_ids or token in request.params.stop_token_ids:
            reason = "stop"
            text = ""
        else:
            text = detok.push(token)
            if detok.stopped:
                reason = "stop"
        if reason is None and request.guide is not None and request.guide.finished:
            reason = "stop"  # the JSON value is complete
        if reason is None:
            out_of_room = request.num_tokens >= self.max_model_len
            if len(request.output_token_ids) >= request.params.max_tokens or out_of_room:
                reason = "length"
        if reason is not None and not detok.stopped:
            text += detok.finish()
        request.text += text
        if reason is not None:
            self._finish(request, reason)
        return self._output(request, [token], text)

    def _output(self, request: Request, new: list[int], text: str) -> RequestOutput:
        return RequestOutput(
            request_id=request.request_id,
            new_token_ids=new,
            text=text,
            finished=request.finished,
            finish_reason=request.finish_reason,
            num_prompt_tokens=len(request.prompt_token_ids),
            num_output_tokens=len(request.output_token_ids),
            num_cached_tokens=request.num_cached_tokens,
            arrival=request.arrival,
            first_token_time=request.first_token_time,
        )

    def _finish(self, request: Request, reason: str) -> None:
        request.status = Status.FINISHED
        request.finish_reason = reason
        request.finish_time = self.clock()
        self.counters.finished[reason] = self.counters.finished.get(reason, 0) + 1
        self.scheduler.remove(request)
        self.kv.finish(request, request.finish_time, self.memory_view())
        if request.request_id not in self.kv.kept:
            self.requests.pop(request.request_id, None)

    # ---- convenience ---------------------------------------------------------------------

    def run_until_done(self, max_steps: int = 100_000) -> dict[str, list[RequestOutput]]:
        """Step until no request is left; every output grouped by request id."""
        results: dict[str, list[RequestOutput]] = {}
        for _ in range(max_steps):
            if not self.has_unfinished():
                return results
            for out in self.step():
                results.setdefault(out.request_id, []).append(out)
        raise RuntimeError(f"requests still unfinished after {max_steps} steps")

    def generate(
        self,
        prompt: str | list[int] | None = None,
        params: SamplingParams | None = None,
        hints: Hints | None = None,
        **options: Any,
    ) -> Request:
        """Run one request to completion (other queued requests run alongside)."""
        request = self.prepare_request(prompt, params, hints, **options)
        self.enqueue(request)
        while not request.finished:
            if not self.has_unfinished():
                raise RuntimeError("the engine has nothing left to run")
            self.step()
        return request

    # ---- KV export / import (disaggregated prefill and decode) ---------------------------

    def export_kv(self, request_id: str) -> bytes:
        """The tokens and KV of a finished request added with `keep_kv=True`, as bytes that
        `import_kv` on another engine with the same model turns into a request that decodes on
        from where this one stopped. Releases the request's blocks here."""
        request = self.kv.kept.get(request_id)
        if request is None:
            raise ValueError(
                f"request {request_id} has no kept KV; add it with keep_kv=True and let it finish"
            )
        kv = self.kv.export_blocks(request)
        header = json.dumps(
            {
                "model": self.model_name,
                "block_size": self.block_size,
                "token_ids": request.all_token_ids,
                "output_token_ids": request.output_token_ids,
                "num_computed_tokens": request.num_computed_tokens,
            }
        ).encode()
        self.release_kv(request_id)
        return _EXPORT_MAGIC + struct.pack("<I", len(header)) + header + kv

    def release_kv(self, request_id: str) -> None:
        self.kv.release_kept(request_id)
        self.requests.pop(request_id, None)

    def import_kv(
        self,
        data: bytes,
        params: SamplingParams | None = None,
        hints: Hints | None = None,
        *,
        request_id: str | None = None,
    ) -> str:
        """Queue a request whose context and KV come from another engine's `export_kv`; it
        decodes from the exported request's last token on. Returns the request id."""
        if not data.startswith(_EXPORT_MAGIC):
            raise ValueError("the data is not a hetagent sequence export")
        start = len(_EXPORT_MAGIC) + 4
        (length,) = struct.unpack("<I", data[len(_EXPORT_MAGIC) : start])
        header = json.loads(data[start : start + length])
        if header["block_size"] != self.block_size:
            raise ValueError(
                f"exported KV uses blocks of {header['block_size']} tokens, this engine "
                f"{self.block_size}"
            )
        if header["model"] != self.model_name:
            raise ValueError(
                f"exported KV is of model {header['model']}, this engine serves {self.model_name}"
            )
        request = self.prepare_request(header["token_ids"], params, hints, request_id=request_id)
        if request.guide is not None:  # constrained output: go on from where it stopped
            for token in header.get("output_token_ids", []):
                request.guide.accept(token)
        self.kv.import_blocks(request, header["num_computed_tokens"], data[start + length :])
        return self.enqueue(request)

    # ---- metrics -------------------------------------------------------------------------

    def metrics(self) -> EngineMetrics:
        return EngineMetrics(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            kv=self.kv.stats(),
            counters=self.counters,
        )


class AsyncLLMEngine:
    """Runs an `LLMEngine` in a background thread; `generate()` is an async iterator of one
    request's outputs. New requests are validated on the caller's thread and handed over
    through a queue, so a bad request never reaches the step loop and the engine keeps serving.
    """

    def __init__(self, engine: LLMEngine, idle_tick: float = 0.05) -> None:
        self.engine = engine
        self.idle_tick = idle_tick  # how often leases are reconsidered while nothing runs
        self._inbox: list[tuple[str, Any]] = []
        self._lock = threading.Lock()  # guards the inbox
        self._step_lock = threading.Lock()  # held while the engine's state changes
        self._wake = threading.Event()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="hetagent-engine", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def metrics(self) -> EngineMetrics:
        """A consistent snapshot, taken between steps."""
        with self._step_lock:
            return self.engine.metrics()

    async def call(self, fn: Callable[[LLMEngine], Any]) -> Any:
        """Run `fn(engine)` between two steps (exporting or importing KV, ending a lease)."""

        def locked() -> Any:
            with self._step_lock:
                return fn(self.engine)

        result = await asyncio.to_thread(locked)
        self._wake.set()  # an import may have queued a request
        return result

    async def decode_imported(
        self, data: bytes, params: SamplingParams, hints: Hints | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Outputs of a request that decodes on from another engine's `export_kv`."""
        request_id = uuid.uuid4().hex

        async def start() -> None:
            await self.call(lambda e: e.import_kv(data, params, hints, request_id=request_id))

        async for item in self._receive(request_id, start):
            yield item

    def _post(self, kind: str, item: Any) -> None:
        with self._lock:
            self._inbox.append((kind, item))
        self._wake.set()

    async def generate(
        self,
        prompt: str | list[int] | None = None,
        params: SamplingParams | None = None,
        hints: Hints | None = None,
        **options: Any,
    ) -> AsyncIterator[RequestOutput]:
        """Outputs of one request as they are produced; raises ValueError before the first
        output if the request is invalid."""
        request = self.engine.prepare_request(prompt, params, hints, **options)
        stream = self.stream(request)
        try:
            async for out in stream:
                yield out
        finally:
            await stream.aclose()  # now, not at garbage collection: the abort goes out at once

    async def stream(self, request: Request) -> AsyncIterator[RequestOutput]:
        """Run a request made by `engine.prepare_request` (validated already) and yield its
        outputs. Closing the iterator early (a client went away) aborts the request."""

        async def start() -> None:
            self._post("add", request)

        async for item in self._receive(request.request_id, start):
            yield item

    async def _receive(
        self, request_id: str, start: Callable[[], Awaitable[None]]
    ) -> AsyncIterator[RequestOutput]:
        """A request's outputs as the engine thread delivers them, once `start` has handed it
        over; leaving early aborts it."""
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), queue)
        finished = False
        try:
            await start()
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise RuntimeError(f"engine failed: {item}") from item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._post("abort", request_id)

    def _deliver(self, request_id: str, item: Any) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            loop, queue = stream
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def _loop(self) -> None:
        engine = self.engine
        while not self._stopped:
            with self._lock:
                inbox, self._inbox = self._inbox, []
                self._wake.clear()
            with self._step_lock:
                for kind, item in inbox:
                    if kind == "add":
                        try:
                            engine.enqueue(item)
                        except ValueError as exc:
                            self._deliver(item.request_id, exc)
                    else:
                        engine.abort(item)
            if not engine.has_unfinished():
                if engine.kv.leases:  # nothing to run: let the policy reconsider the leases
                    with self._step_lock:
                        engine.step()
                self._wake.wait(self.idle_tick if engine.kv.leases else None)
                continue
            try:
                with self._step_lock:
                    outputs = engine.step()
            except Exception as exc:  # a model failure fails the running requests, not the loop
                self.error = exc
                with self._step_lock:
                    for request in list(engine.scheduler.running):
                        self._deliver(request.request_id, exc)
                        engine.abort(request.request_id)
                continue
            for out in outputs:
                self._deliver(out.request_id, out)
