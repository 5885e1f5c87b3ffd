"""OpenAI-compatible HTTP API over an `AsyncLLMEngine`.

`/v1/chat/completions` (streaming SSE and not), `/v1/completions`, `/v1/models`, `/metrics`
(Prometheus text, vLLM's metric names where they mean the same), `/health`. Agent hints ride in
the body's `hetagent` object (the OpenAI client's `extra_body`):
`{"hetagent": {"program_id": "p1", "turn": 2, "last_turn": false, "tool": "bash",
"tool_seconds": 1.5}}`. Every bad request gets a 4xx with an OpenAI-shaped error naming what to
fix; nothing a client sends stops the engine.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hetagent.backends.local.engine.batch import SamplingParams
from hetagent.backends.local.engine.engine import AsyncLLMEngine
from hetagent.backends.local.engine.request import Hints
from hetagent.backends.local.engine.request import Request as EngineRequest


class APIError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _error(status: int, message: str, param: str | None = None, code: str | None = None):
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


class _Body(BaseModel):
    # OpenAI clients send fields this engine ignores (user, logprobs=False, ...): allow them
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    hetagent: dict[str, Any] | None = None


class _Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class ChatBody(_Body):
    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: int | None = None


class CompletionBody(_Body):
    prompt: str | list[int] | list[str]
    max_tokens: int | None = 16  # the OpenAI default for completions


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise APIError(400, f"message content of type {part.get('type')!r} is not supported")
        parts.append(str(part.get("text", "")))
    return "".join(parts)


class Server:
    """The app and the state its routes share (the engine, Prometheus histograms)."""

    def __init__(self, engine: AsyncLLMEngine) -> None:
        self.async_engine = engine
        self.engine = engine.engine
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(self))
        buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time from arrival in the engine to the first generated token.",
            buckets=buckets,
            registry=self.registry,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Time from arrival in the engine to the last token.",
            buckets=buckets,
            registry=self.registry,
        )
        self.app = self._build()

    # ---- request translation -------------------------------------------------------------

    def _params(self, body: _Body, max_tokens: int | None) -> SamplingParams:
        if body.model != self.engine.model_name:
            raise APIError(
                404,
                f"model {body.model!r} is not served here; use {self.engine.model_name!r}",
                "model",
                "model_not_found",
            )
        if body.n != 1:
            raise APIError(400, "n must be 1 (one choice per request)", "n")
        if max_tokens is not None and max_tokens < 1:
            raise APIError(400, f"max_tokens must be at least 1, got {max_tokens}", "max_tokens")
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        try:
            return SamplingParams(
                max_tokens=max_tokens or self.engine.max_model_len,
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p,
                seed=body.seed,
                stop=stop,
                stop_token_ids=tuple(body.stop_token_ids or ()),
            )
        except ValueError as exc:
            raise APIError(400, str(exc)) from None

    def _prepare(self, params: SamplingParams, body: _Body, **prompt: Any) -> EngineRequest:
        try:
            hints = Hints.from_dict(body.hetagent)
            return self.engine.prepare_request(params=params, hints=hints, **prompt)
        except ValueError as exc:
            raise APIError(400, str(exc)) from None

    async def _run(self, request: EngineRequest) -> AsyncIterator[Any]:
        first = True
        stream = self.async_engine.stream(request)
        try:
            async for out in stream:
                if first and out.first_token_time is not None:
                    self.ttft.observe(out.first_token_time - out.arrival)
                    first = False
                if out.finished:
                    self.e2e.observe(self.engine.clock() - out.arrival)
                yield out
        finally:
            await stream.aclose()  # a client that went away aborts its request at once

    @staticmethod
    def _usage(out: Any) -> dict[str, Any]:
        return {
            "prompt_tokens": out.num_prompt_tokens,
            "completion_tokens": out.num_output_tokens,
            "total_tokens": out.num_prompt_tokens + out.num_output_tokens,
            "prompt_tokens_details": {"cached_tokens": out.num_cached_tokens},
        }

    # ---- routes --------------------------------------------------------------------------

    def _build(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(app: FastAPI):
            self.async_engine.start()
            yield
            self.async_engine.shutdown()

        app = FastAPI(title="hetagent engine", lifespan=lifespan)

        @app.exception_handler(APIError)
        async def api_error(_: Request, exc: APIError):
            return _error(exc.status, exc.message, exc.param, exc.code)

        @app.get("/health")
        async def health():
            return {"status": "ok"}

        @app.get("/v1/models")
        async def models():
            return {
                "object": "list",
                "data": [
                    {
                        "id": self.engine.model_name,
                        "object": "model",
                        "created": 0,
                        "owned_by": "hetagent",
                        "max_model_len": self.engine.max_model_len,
                    }
                ],
            }

        @app.get("/metrics")
        async def metrics():
            return PlainTextResponse(
                generate_latest(self.registry), media_type="text/plain; version=0.0.4"
            )

        @app.post("/v1/chat/completions")
        async def chat(raw: Request):
            body = await _parse(raw, ChatBody)
            max_tokens = body.max_completion_tokens
            if max_tokens is None:
                max_tokens = body.max_tokens
            params = self._params(body, max_tokens)
            messages = [{"role": m.role, "content": _text(m.content)} for m in body.messages]
            request = self._prepare(params, body, messages=messages)
            rid, created = f"chatcmpl-{request.request_id}", int(time.time())
            head = {"id": rid, "created": created, "model": self.engine.model_name}
            if body.stream:
                usage = bool((body.stream_options or {}).get("include_usage"))
                return _sse(self._chat_chunks(request, head, usage))
            text, last = "", None
            async for out in self._run(request):
                text, last = text + out.text, out
            return {
                **head,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": last.finish_reason,
                        "logprobs": None,
                    }
                ],
                "usage": self._usage(last),
            }

        @app.post("/v1/completions")
        async def completions(raw: Request):
            body = await _parse(raw, CompletionBody)
            params = self._params(body, body.max_tokens)
            prompt = body.prompt
            if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
                if len(prompt) != 1:
                    raise APIError(400, "give one prompt per request", "prompt")
                prompt = prompt[0]
            request = self._prepare(params, body, prompt=prompt)
            rid, created = f"cmpl-{request.request_id}", int(time.time())
            head = {"id": rid, "created": created, "model": self.engine.model_name}
            if body.stream:
                usage = bool((body.stream_options or {}).get("include_usage"))
                return _sse(self._completion_chunks(request, head, usage))
            text, last = "", None
            async for out in self._run(request):
                text, last = text + out.text, out
            return {
                **head,
                "object": "text_completion",
                "choices": [
                    {
                        "index": 0,
                        "text": text,
                        "finish_reason": last.finish_reason,
                        "logprobs": None,
                    }
                ],
                "usage": self._usage(last),
            }

        return app

    async def _chat_chunks(self, request: EngineRequest, head: dict, usage: bool):
        def chunk(delta: dict, finish: str | None) -> dict:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            return {**head, "object": "chat.completion.chunk", "choices": [choice]}

        yield chunk({"role": "assistant", "content": ""}, None)
        last = None
        async for out in self._run(request):
            last = out
            if out.text or out.finished:
                yield chunk({"content": out.text} if out.text else {}, out.finish_reason)
        if usage and last is not None:
            yield {
                **head,
                "object": "chat.completion.chunk",
                "choices": [],
                "usage": self._usage(last),
            }

    async def _completion_chunks(self, request: EngineRequest, head: dict, usage: bool):
        last = None
        async for out in self._run(request):
            last = out
            if out.text or out.finished:
                choice = {"index": 0, "text": out.text, "finish_reason": out.finish_reason}
                yield {**head, "object": "text_completion", "choices": [choice]}
        if usage and last is not None:
            yield {**head, "object": "text_completion", "choices": [], "usage": self._usage(last)}


async def _parse(raw: Request, model: type[BaseModel]) -> Any:
    try:
        data = json.loads(await raw.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise APIError(400, f"{where}: {first['msg']}", where) from None


def _sse(chunks: AsyncIterator[dict]) -> StreamingResponse:
    async def events():
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n"
        except Exception as exc:  # the stream already started: report in-band, as OpenAI does
            error = {"error": {"message": str(exc), "type": "server_error"}}
            yield f"data: {json.dumps(error)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


class _EngineCollector:
    """Reads the engine's gauges and counters at scrape time."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self):
        m = self.server.async_engine.metrics()
        kv, c = m.kv, m.counters

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        yield gauge("vllm:num_requests_running", "Requests in the running batch.", m.running)
        yield gauge("vllm:num_requests_waiting", "Requests waiting to be admitted.", m.waiting)
        usage_doc = (
            "Fraction of the engine's KV block pool in use (referenced by sequences or leases); "
            "on this CPU engine the pool lives in host memory, not on a GPU."
        )
        yield gauge("vllm:gpu_cache_usage_perc", usage_doc, kv.usage)
        yield gauge("vllm:kv_cache_usage_perc", usage_doc, kv.usage)
        yield counter("vllm:prompt_tokens", "Prompt tokens of admitted requests.", c.prompt_tokens)
        yield counter("vllm:generation_tokens", "Generated tokens.", c.generation_tokens)
        yield counter("vllm:num_preemptions", "Preemptions (by recompute).", c.preemptions)
        yield counter(
            "vllm:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.",
            kv.prefix_queries,
        )
        yield counter(
            "vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.", kv.prefix_hits
        )
        success = CounterMetricFamily(
            "vllm:request_success", "Finished requests by reason.", labels=["finished_reason"]
        )
        for reason, count in sorted(c.finished.items()):
            success.add_metric([reason], count)
        yield success
        blocks = GaugeMetricFamily(
            "hetagent:kv_blocks", "KV blocks of the engine's pool by state.", labels=["state"]
        )
        blocks.add_metric(["used"], kv.used_blocks)
        blocks.add_metric(["free"], kv.free_blocks)
        blocks.add_metric(["cached_free"], kv.cached_free_blocks)
        blocks.add_metric(["leased"], kv.leased_blocks)
        blocks.add_metric(["demoted"], kv.demoted_blocks)
        yield blocks
        yield counter(
            "hetagent:kv_swapped_out_blocks",
            "KV blocks demoted to host memory.",
            kv.swapped_out_blocks,
        )
        yield counter(
            "hetagent:kv_swapped_in_blocks",
            "KV blocks copied back from host memory.",
            kv.swapped_in_blocks,
        )
        yield gauge("hetagent:kv_leases", "Programs whose KV is held between turns.", kv.num_leases)
        yield gauge(
            "hetagent:prefix_cache_hit_rate", "Prompt tokens found / looked up.", kv.prefix_hit_rate
        )


def build_app(engine: AsyncLLMEngine) -> FastAPI:
    """The FastAPI app serving `engine` (started and stopped with the app's lifespan)."""
    return Server(engine).app
