"""The runtime: executes `ExecutablePlan`s as runs (program instances), durably.

A run walks its plan's steps as a dataflow: every unit of work starts as soon as the values it
reads exist, so independent branches run concurrently. Units are what a backend executes in one
go: an LLM call (tokenize -> prefill -> [KV transfer] -> decode -> detokenize, on the pools the
plan chose), a retrieval (embed -> search), a tool call, a template; a ReAct loop runs its turn
and its act region until the model answers or `maxTurns` is reached. Every LLM call, retrieval
and tool call is checkpointed in the run store under a key (`solve.turn@2`); a restarted
process resumes a run by replaying it, taking each finished unit's outputs from the store
instead of running it again. Retries with exponential backoff and timeouts come from each
node's `retry` and `timeoutSeconds`; a cancelled run stops at once. One run failing never
touches the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import os
import re
import statistics
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hetagent.backends.base import (
    Backend,
    ChatCall,
    ChatResult,
    Hints,
    IndexSpec,
    ModelSpec,
    RetrieveCall,
    ToolCall,
    ToolResult,
)
from hetagent.compiler.emit import ExecutablePlan, PlanLoop, PlanOp
from hetagent.compiler.frontend import SUBGRAPH_SEPARATOR
from hetagent.orchestrator.actions import (
    Answer,
    Mistake,
    ToolAction,
    action_schema,
    describe_tools,
    parse_reply,
)
from hetagent.orchestrator.store import RunStore, Step, StepRecord
from hetagent.orchestrator.telemetry import Telemetry, trace_id
from hetagent.orchestrator.templates import Scope, as_text, node_outputs
from hetagent.spec import AgentGraph, parse_document

CALL_PARTS = ("llm.tokenize", "llm.prefill", "kv.transfer", "llm.decode", "llm.detokenize")
RETRIEVE_PARTS = ("retr.embed", "data.transfer", "retr.search")
DEFAULT_TOOL_SECONDS = 1.0  # predicted duration of a tool with no history yet
HISTORY = 50  # durations kept per tool for its prediction


class RunError(Exception):
    """A run could not go on: the message names the step and what went wrong."""


class InputError(ValueError):
    """The inputs do not fit the agent's declared inputs; the message says which."""


@dataclass(frozen=True)
class RunOptions:
    """Where the agent's relative paths start (indexes, weights), the tools' workspace, and
    policy choices (`spec.policies`, overridden here)."""

    base_dir: Path = Path(".")
    workspace: Path | None = None
    tenant: str = "default"
    policies: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "base_dir": str(self.base_dir),
            "workspace": str(self.workspace) if self.workspace else None,
            "tenant": self.tenant,
            "policies": self.policies,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunOptions:
        workspace = data.get("workspace")
        return cls(
            base_dir=Path(data.get("base_dir", ".")),
            workspace=Path(workspace) if workspace else None,
            tenant=data.get("tenant", "default"),
            policies=dict(data.get("policies") or {}),
        )


@dataclass(frozen=True)
class RunResult:
    run_id: str
    status: str
    outputs: dict[str, Any] | None
    error: str | None
    trace_id: str | None
    steps: list[Step]


class Runtime:
    """Runs plans on a backend, checkpointing in `store`; `owner` names this process when it
    claims unfinished runs to resume them."""

    def __init__(
        self,
        backend: Backend,
        store: RunStore,
        telemetry: Telemetry | None = None,
        owner: str | None = None,
    ):
        self.backend, self.store = backend, store
        self.telemetry = telemetry or Telemetry()
        self.owner = owner or f"{os.uname().nodename}:{os.getpid()}"
        self.tasks: dict[str, asyncio.Task] = {}
        self.tool_seconds: dict[str, list[float]] = {}  # each tool's recent durations
        self.checkpoints = _Checkpoints(store)
        self.pools: set[str] = set()

    # -- the public face ----------------------------------------------------------------------

    async def submit(
        self,
        plan: ExecutablePlan,
        inputs: dict[str, Any],
        options: RunOptions | None = None,
        *,
        run_id: str | None = None,
    ) -> str:
        """Start a run; returns its id at once (the run goes on in the background). A caller
        that names the run (`run_id`, e.g. a Kubernetes object's uid) can submit again safely:
        a run of that id already in the store is the one (`resume` restarts it if unfinished)."""
        if run_id is not None and self.store.get_run(run_id) is not None:
            return run_id
        options = options or RunOptions()
        bound = bind_inputs(plan, inputs)
        run_id = self.store.create_run(
            plan.agent,
            plan.model_dump(mode="json"),
            bound,
            tenant=options.tenant,
            options=options.to_json(),
            run_id=run_id,
        )
        await self._start(run_id, plan, bound, options)
        return run_id

    async def run(
        self, plan: ExecutablePlan, inputs: dict[str, Any], options: RunOptions | None = None
    ) -> RunResult:
        return await self.wait(await self.submit(plan, inputs, options))

    async def wait(self, run_id: str) -> RunResult:
        task = self.tasks.get(run_id)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        return self.result(run_id)

    def result(self, run_id: str) -> RunResult:
        run = self.store.get_run(run_id)
        if run is None:
            raise KeyError(f"no run {run_id}")
        return RunResult(
            run.id, run.status, run.outputs, run.error, run.trace_id, self.store.steps(run_id)
        )

    async def resume(self) -> list[str]:
        """Claim every unfinished run in the store and go on with it from its checkpoints."""
        resumed = []
        for run in self.store.claim_unfinished(self.owner):
            if run.id in self.tasks:
                continue
            try:
                plan = ExecutablePlan.model_validate(run.plan)
                await self._start(run.id, plan, run.inputs, RunOptions.from_json(run.options))
            except Exception as error:  # one run that cannot go on must not stop the others
                self.store.set_status(run.id, "failed", error=f"cannot resume: {error}")
                continue
            resumed.append(run.id)
        return resumed

    async def cancel(self, run_id: str) -> bool:
        """Stop a run; False if it had already finished."""
        cancelled = self.store.cancel(run_id)
        task = self.tasks.get(run_id)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return cancelled

    async def close(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await self.backend.close()

    # -- runs ------------------------------------------------------------------------------

    async def _start(
        self, run_id: str, plan: ExecutablePlan, inputs: dict[str, Any], options: RunOptions
    ) -> None:
        new_pools = {p.name for p in plan.pools} - self.pools
        if new_pools:
            await self.backend.start(sorted(new_pools))
            self.pools |= new_pools
        execution = _Execution(self, run_id, plan, inputs, options)
        task = asyncio.create_task(execution.execute(), name=f"run {run_id}")
        self.tasks[run_id] = task
        task.add_done_callback(lambda _: self.tasks.pop(run_id, None))

    def predicted_seconds(self, tool: str) -> float:
        """The tool's predicted duration: the median of its recent calls."""
        history = self.tool_seconds.get(tool)
        return statistics.median(history) if history else DEFAULT_TOOL_SECONDS

    def record_tool(self, tool: str, seconds: float) -> None:
        history = self.tool_seconds.setdefault(tool, [])
        history.append(seconds)
        del history[:-HISTORY]


class _Checkpoints:
    """Step records written behind the runs: those added during one turn of the event loop
    share a commit, and so do the tools of every run waiting to act in that turn. Writes are
    synchronous: SQLite in WAL mode commits without an fsync, faster than handing the batch to
    a thread and back."""

    def __init__(self, store: RunStore):
        self.store = store
        self.pending: list[StepRecord] = []
        self.waiting: list[asyncio.Future] = []
        self.scheduled = False

    def add(self, record: StepRecord) -> None:
        self.pending.append(record)
        self._schedule()

    def _schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Commit the pending records; a failed commit fails the runs waiting on that batch
        (each waiting tool's run), and the next batch is tried afresh."""
        self.scheduled = False
        batch, self.pending = self.pending, []
        waiting, self.waiting = self.waiting, []
        failure = None
        if batch:
            try:
                self.store.record_steps(batch)
            except Exception as error:  # a locked or unreachable database, a bad value
                failure = RunError(f"the run store could not save steps: {error}")
        for future in waiting:
            if not future.done():
                future.set_exception(failure) if failure else future.set_result(None)

    async def durable(self) -> None:
        """Wait until the records added so far are committed (a failed write raises here)."""
        if self.pending:
            future = asyncio.get_running_loop().create_future()
            self.waiting.append(future)
            self._schedule()
            await future


def workspace_root() -> Path:
    """Where runs keep their tools' files (the same place the tools' sandbox looks)."""
    default = Path.home() / ".local" / "share" / "hetagent" / "workspaces"
    return Path(os.environ.get("HETAGENT_WORKSPACES") or default)


def bind_inputs(plan: ExecutablePlan, inputs: dict[str, Any]) -> dict[str, Any]:
    """The run's inputs: given ones checked against the agent's declarations, defaults filled."""
    declared = plan.documents[""]["spec"].get("inputs", {})
    unknown = sorted(set(inputs) - set(declared))
    if unknown:
        raise InputError(
            f"unknown input {unknown[0]!r}; {plan.agent} takes {', '.join(declared) or 'none'}"
        )
    bound = {}
    for name, spec in declared.items():
        if name in inputs:
            bound[name] = _typed(name, inputs[name], spec.get("type", "string"))
        elif "default" in spec:
            bound[name] = spec["default"]
        else:
            raise InputError(f"input {name!r} is required (--input {name}=VALUE)")
    return bound


def _typed(name: str, value: Any, kind: str) -> Any:
    """A command-line string made the declared type; other values checked against it."""
    if isinstance(value, str) and kind != "string":
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InputError(f"input {name!r} must be {kind}, got {value!r}") from None
    python = {
        "string": str, "integer": int, "number": (int, float), "boolean": bool,
        "object": dict, "array": list,
    }[kind]  # fmt: skip
    if not isinstance(value, python) or (isinstance(value, bool) and kind != "boolean"):
        raise InputError(f"input {name!r} must be {kind}, got {value!r}")
    return value


# -- one run ---------------------------------------------------------------------------------


@dataclass
class _Unit:
    """Plan ops executed together; `key` names its checkpoint (None: cheap, not kept)."""

    kind: str  # call, retrieve, loop, or the op's kind
    ops: list[PlanOp]
    loop: PlanLoop | None = None

    @property
    def first(self) -> PlanOp:
        return self.ops[0]

    @functools.cached_property
    def inputs(self) -> list[str]:
        if self.loop is not None:
            return self.loop.init
        made = {name for op in self.ops for name in op.outputs}
        needed = [name for op in self.ops for name in op.inputs if name not in made]
        return list(dict.fromkeys(needed))

    @functools.cached_property
    def outputs(self) -> list[str]:
        if self.loop is not None:
            return self.loop.outputs
        return [name for op in self.ops for name in op.outputs]

    @property
    def id(self) -> str | None:
        if self.loop is not None:
            return self.loop.id
        if self.kind in ("call", "retrieve"):
            return self.first.id.rsplit(".", 1)[0]
        return self.first.id

    @property
    def node(self) -> str | None:
        return self.loop.node if self.loop is not None else self.first.node


def units_of(steps: list[PlanOp | PlanLoop]) -> list[_Unit]:
    """Group a block's ops: an LLM call's ops, a retrieval's ops, and single ops."""
    units: list[_Unit] = []
    grouped: set[int] = set()
    for i, step in enumerate(steps):
        if i in grouped:
            continue
        if isinstance(step, PlanLoop):
            units.append(_Unit("loop", [], step))
            continue
        if step.kind in ("llm.tokenize", "retr.embed"):
            kind, parts = (
                ("call", CALL_PARTS)
                if step.kind == "llm.tokenize"
                else ("retrieve", RETRIEVE_PARTS)
            )
            prefix = step.id.rsplit(".", 1)[0] + "."
            members = [step]
            for j in range(i + 1, len(steps)):
                other = steps[j]
                if (
                    isinstance(other, PlanOp)
                    and other.kind in parts
                    and other.id is not None
                    and other.id.startswith(prefix)
                ):
                    members.append(other)
                    grouped.add(j)
            units.append(_Unit(kind, members))
            continue
        units.append(_Unit(step.kind, [step]))
    return units


class _Execution:
    def __init__(
        self,
        runtime: Runtime,
        run_id: str,
        plan: ExecutablePlan,
        inputs: dict[str, Any],
        options: RunOptions,
    ):
        self.runtime, self.run_id, self.plan, self.options = runtime, run_id, plan, options
        self.store, self.backend, self.telemetry = runtime.store, runtime.backend, runtime.telemetry
        self.inputs = inputs
        self.finished = self.store.finished_steps(run_id)
        self.workspace = options.workspace or workspace_root() / run_id
        self.pool_devices = {p.name: p.device for p in plan.pools}
        self.graphs: dict[str, AgentGraph] = {}  # document prefix -> the parsed document
        declared = plan.documents[""]["spec"].get("policies") or {}
        self.policies = {k: v for k, v in (declared | options.policies).items() if v}

    async def execute(self) -> None:
        store, run_id = self.store, self.run_id
        with self.telemetry.workflow(self.plan.agent, run_id) as span:
            if not store.set_status(run_id, "running", trace_id=trace_id(span)):
                return  # cancelled (or finished) before it could start
            try:
                self.workspace.mkdir(parents=True, exist_ok=True)
                env = {f"input:{name}": value for name, value in self.inputs.items()}
                await self._block(units_of(self.plan.steps), env, ())
                scope = Scope(self.plan.documents, self.plan.values, env)
                declared = self.plan.documents[""]["spec"].get("outputs", {})
                outputs = {key: scope.fill(text) for key, text in declared.items()}
                await self.runtime.checkpoints.durable()
            except asyncio.CancelledError:
                self.telemetry.runs.labels(self.plan.agent, "cancelled").inc()
                if store.get_run(run_id).status != "cancelled":  # the process is stopping
                    raise
                await self.release_all()
                return
            except RunError as error:
                with contextlib.suppress(RunError):  # the steps so far, if the store works
                    await self.runtime.checkpoints.durable()
                store.set_status(run_id, "failed", error=str(error))
                self.telemetry.runs.labels(self.plan.agent, "failed").inc()
                await self.release_all()
                return
            except Exception as error:  # an internal error: keep its type, fail this run only
                store.set_status(run_id, "failed", error=f"{type(error).__name__}: {error}")
                self.telemetry.runs.labels(self.plan.agent, "failed").inc()
                await self.release_all()
                raise
            store.set_status(run_id, "succeeded", outputs=_jsonable(outputs))
            self.telemetry.runs.labels(self.plan.agent, "succeeded").inc()

    # -- the dataflow ---------------------------------------------------------------------

    async def _block(self, units: list[_Unit], env: dict[str, Any], turns: tuple[int, ...]):
        """Run a block's units as their inputs become available, concurrently."""
        missing = {id(u): sum(name not in env for name in set(u.inputs)) for u in units}
        readers: dict[str, list[_Unit]] = {}
        for unit in units:
            for name in set(unit.inputs):
                if name not in env:
                    readers.setdefault(name, []).append(unit)
        ready = [u for u in units if not missing[id(u)]]
        running: dict[asyncio.Task, _Unit] = {}
        finished = 0
        try:
            while finished < len(units):
                for unit in ready:
                    running[asyncio.create_task(self._unit(unit, env, turns))] = unit
                ready = []
                if not running:
                    absent = sorted(name for name in readers if name not in env)
                    raise RunError(f"the plan never produces {', '.join(absent)}")
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    running.pop(task)
                    finished += 1
                    for name, value in task.result().items():  # a failed unit raises here
                        if name in env:
                            continue
                        env[name] = value
                        for reader in readers.pop(name, ()):
                            missing[id(reader)] -= 1
                            if not missing[id(reader)]:
                                ready.append(reader)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _unit(
        self, unit: _Unit, env: dict[str, Any], turns: tuple[int, ...]
    ) -> dict[str, Any]:
        """The unit's output values, from its checkpoint or by running it (retries, timeout)."""
        if unit.kind == "loop":
            return await self._with_timeout(unit, self._loop(unit, env, turns))
        runner = getattr(self, "_" + unit.kind.replace(".", "_"), None)
        if runner is None:
            raise RunError(f"the runtime cannot run {unit.kind} ({unit.id})")
        if unit.kind not in ("call", "retrieve", "tool.exec"):  # cheap: not checkpointed
            values = runner(unit, env, turns)
            return await values if inspect.isawaitable(values) else values
        key = unit.id + "".join(f"@{turn}" for turn in turns)
        if key in self.finished:
            return dict(zip(unit.outputs, self.finished[key], strict=True))
        retry = self._spec(unit.node).retry  # None: one attempt
        attempts = retry.max_attempts if retry else 1
        checkpoints, pool = self.runtime.checkpoints, unit.ops[-1].pool
        for attempt in range(1, attempts + 1):
            checkpoints.add(
                StepRecord(self.run_id, key, "running", time.time(), unit.kind, unit.node, pool)
            )
            started = time.perf_counter()
            try:
                values, details = await self._with_timeout(unit, runner(unit, env, turns, key))
            except RunError as error:
                checkpoints.add(
                    StepRecord(self.run_id, key, "failed", time.time(), error=str(error))
                )
                self.telemetry.steps.labels(unit.kind, pool or "", "failed").inc()
                if attempt == attempts:
                    raise
                await asyncio.sleep(
                    retry.backoff_seconds * retry.backoff_multiplier ** (attempt - 1)
                )
                continue
            seconds = time.perf_counter() - started
            self.telemetry.steps.labels(unit.kind, pool or "", "succeeded").inc()
            self.telemetry.step_seconds.labels(unit.kind, pool or "").observe(seconds)
            outputs = [_jsonable(values[name]) for name in unit.outputs]
            checkpoints.add(
                StepRecord(
                    self.run_id, key, "succeeded", time.time(), outputs=outputs, details=details
                )
            )
            if unit.kind == "tool.exec":  # its side effect happened: never again on resume
                await checkpoints.durable()
            return dict(zip(unit.outputs, outputs, strict=True))
        raise AssertionError("unreachable")

    async def _with_timeout(self, unit: _Unit, work: Awaitable[Any]) -> Any:
        limit = self._node(unit.node).get("timeoutSeconds")
        try:
            return await asyncio.wait_for(work, limit)
        except TimeoutError:
            raise RunError(f"step {unit.node} ran past its {limit:g} s timeout") from None

    def _node(self, path: str | None) -> dict[str, Any]:
        """A node as its document writes it (the text its templates are rendered from)."""
        if not path:
            return {}
        return self._scope(env={}).node(path)

    def _spec(self, path: str) -> Any:
        """The same node as the spec reads it, every default filled in (one place for them)."""
        prefix, _, name = path.rpartition(SUBGRAPH_SEPARATOR)
        return next(n for n in self._graph(prefix).spec.nodes if n.name == name)

    def _graph(self, prefix: str) -> AgentGraph:
        """The agent's document (or a subgraph's, by its path prefix), parsed once a run."""
        if prefix not in self.graphs:
            self.graphs[prefix] = parse_document(self.plan.documents[prefix])
        return self.graphs[prefix]

    def _scope(self, env: dict[str, Any], node: str | None = None) -> Scope:
        scope = Scope(self.plan.documents, self.plan.values, env)
        return scope.for_node(node) if node else scope

    # -- units ------------------------------------------------------------------------------

    def _arith_constant(self, unit, env, turns):
        return {unit.first.outputs[0]: unit.first.attributes["value"]}

    def _arith_addi(self, unit, env, turns):
        a, b = unit.first.inputs
        return {unit.first.outputs[0]: env[a] + env[b]}

    def _data_transfer(self, unit, env, turns):
        """In one process a value crosses pools by reference; the plan's pools still say where
        each side runs."""
        return {unit.first.outputs[0]: env[unit.first.inputs[0]]}

    _kv_transfer = _data_transfer

    def _kv_lease(self, unit, env, turns):
        op = unit.first
        return {op.outputs[0]: {"program": self.program(op.node), "model": op.attributes["model"]}}

    async def _kv_release(self, unit, env, turns):
        """The program's calls of this model are over: its held KV can go."""
        op = unit.first
        model = self._model(op.attributes["model"], op.node)
        await self.backend.release(self.program(op.node), model, op.pool)
        return {}

    def program(self, node: str | None) -> str:
        """What engines know a step's calls by: each LLM step (a ReAct loop, an llm node) of a
        run is a program of its own, with its own KV lease and tool history."""
        return f"{self.run_id}/{node}"

    async def release_all(self) -> None:
        """Let every KV a run may hold go (a run that failed or was cancelled never reached
        its release steps); a backend that fails to release must not hide the run's error."""
        for op in _release_ops(self.plan.steps):
            with contextlib.suppress(Exception):
                model = self._model(op.attributes["model"], op.node)
                await self.backend.release(self.program(op.node), model, op.pool)

    def _agent_continue(self, unit, env, turns):
        """Go on with the act region when the model asked for a tool (or made a mistake the
        next turn can fix) and turns remain."""
        op = unit.first
        reply, turn = (env[name] for name in op.inputs)
        wants_tool = not isinstance(reply.get("action"), dict) or "answer" not in reply["action"]
        return {op.outputs[0]: wants_tool and turn < op.attributes["max_turns"]}

    def _data_template(self, unit, env, turns):
        op = unit.first
        template = op.attributes["template"]
        if template == "observation":
            return {op.outputs[0]: _observe(*(env[name] for name in op.inputs))}
        scope = self._scope(env, op.node)
        text = scope.render(scope.text_at(template))
        node = self._node(op.node)
        if node.get("type") == "transform":
            return {op.outputs[0]: node_outputs(text=text, value=text)}
        return {op.outputs[0]: text}

    def _data_parse(self, unit, env, turns):
        op = unit.first
        node = self._node(op.node)
        text = as_text(self._scope(env, op.node).fill(node["parse"]["input"]))
        return {op.outputs[0]: node_outputs(text=text, value=_parse(text, node["parse"], op))}

    async def _call(self, unit, env, turns, key):
        """One LLM call: an `llm` node's messages, or a ReAct turn over the loop's history."""
        by_kind = {op.kind: op for op in unit.ops}
        tokenize, decode = by_kind["llm.tokenize"], by_kind["llm.decode"]
        node, spec = self._node(tokenize.node), self._spec(tokenize.node)
        scope = self._scope(env, tokenize.node)
        model = self._model(tokenize.attributes["model"], tokenize.node)
        turn = turns[-1] if turns else 1
        looping = spec.type == "agent"
        last = not looping or turn >= spec.max_turns
        max_tokens = decode.attributes.get("max_tokens") or spec.max_tokens
        schema = None
        if looping:
            tools = await self._tool_schemas(spec.tools)
            messages = _first_messages(scope, node, env[tokenize.inputs[0]], tools)
            # the last turn may only answer (a tool call there could never run); a token is at
            # least a character, so an answer this long closes its JSON within the call's
            # max_tokens
            schema = action_schema({} if last else tools, max(16, max_tokens - 16))
        else:
            messages = [
                {"role": m["role"], "content": scope.render(m["content"])} for m in node["messages"]
            ]
        call = ChatCall(
            key=key,
            model=model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=spec.temperature,
            hints=Hints(program=self.program(tokenize.node), turn=turn, last_turn=last),
            prefill_pool=by_kind["llm.prefill"].pool,
            decode_pool=decode.pool,
            response_schema=schema,
            policies=self.policies,
        )
        pools = {"prefill_pool": call.prefill_pool, "decode_pool": call.decode_pool}
        with self.telemetry.chat(
            model.id, call.decode_pool, self.pool_devices.get(call.decode_pool), turn=turn,
            prefill_pool=call.prefill_pool,
        ) as span:  # fmt: skip
            try:
                result: ChatResult = await self.backend.chat(call)
            except (ValueError, RuntimeError, OSError) as error:
                raise RunError(f"LLM call {key} failed: {error}") from None
            span.set_attribute("gen_ai.usage.input_tokens", result.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", result.output_tokens)
            span.set_attribute("hetagent.kv.cached_tokens", result.cached_tokens)
            span.set_attribute("gen_ai.response.finish_reasons", [result.finish_reason])
        labels = (model.id, call.decode_pool or "")
        self.telemetry.tokens.labels(*labels, "input").inc(result.prompt_tokens)
        self.telemetry.tokens.labels(*labels, "output").inc(result.output_tokens)
        self.telemetry.tokens.labels(*labels, "cached").inc(result.cached_tokens)
        if result.transfer_s is not None:
            self.telemetry.transfer_seconds.labels(
                call.prefill_pool or "", call.decode_pool or ""
            ).observe(result.transfer_s)
        details = {
            "prompt_tokens": result.prompt_tokens,
            "output_tokens": result.output_tokens,
            "cached_tokens": result.cached_tokens,
            "finish_reason": result.finish_reason,
            "ttft_s": result.ttft_s,
            "transfer_s": result.transfer_s,
            "transfer_bytes": result.transfer_bytes,
            "model": model.id,
        } | pools
        value = (
            _reply(result.text, messages, tools, result.finish_reason) if looping else result.text
        )
        if looping:
            await self._announce_tool(call, value["action"])
        lease = {"program": self.program(tokenize.node), "model": model.id}
        values = {name: value for op in unit.ops for name in op.outputs}
        values[decode.outputs[-1]] = lease  # the decode's second result is the call's KV
        return values, details

    async def _announce_tool(self, call: ChatCall, action: dict[str, Any]) -> None:
        """Tell the engine holding the turn's KV which tool the program runs now and how long
        it is likely to take (its recent calls): what retention policies decide on."""
        announce = getattr(self.backend, "announce_tool", None)
        tool = action.get("tool")
        if announce is not None and tool is not None:
            seconds = self.runtime.predicted_seconds(tool)
            await announce(call.hints.program, call.model, call.decode_pool, tool, seconds)

    async def _retrieve(self, unit, env, turns, key):
        by_kind = {op.kind: op for op in unit.ops}
        embed, search = by_kind["retr.embed"], by_kind["retr.search"]
        node = self._node(embed.node)
        scope = self._scope(env, embed.node)
        index_name = search.attributes["index"]
        document = scope.document()
        index = document["spec"]["indexes"][index_name]
        call = RetrieveCall(
            key=key,
            index=IndexSpec(
                name=index_name,
                documents=(self._base(embed.node) / index["documents"]).resolve(),
                embedding_model=self._model_key(index["embeddingModel"], embed.node),
                chunk_tokens=self._graph(scope.prefix.rstrip(SUBGRAPH_SEPARATOR))
                .spec.indexes[index_name]
                .chunk_tokens,
            ),
            query=as_text(scope.fill(node["query"])),
            k=search.attributes.get("k") or self._spec(embed.node).k,
            embed_pool=embed.pool,
            search_pool=search.pool,
        )
        with self.telemetry.retrieval(index_name, search.pool):
            try:
                found = await self.backend.retrieve(call)
            except (ValueError, OSError) as error:
                raise RunError(f"retrieval {key} failed: {error}") from None
        documents = [{"text": d.text, "source": d.source, "score": d.score} for d in found]
        text = "\n\n".join(f"[{d.source}]\n{d.text}" for d in found)
        value = node_outputs(text=text, documents=documents)
        return {name: value for op in unit.ops for name in op.outputs}, {"documents": len(found)}

    async def _tool_exec(self, unit, env, turns, key):
        """A `tool` node's call, or the act of a ReAct turn (the model's action)."""
        op = unit.first
        node = self._node(op.node)
        if node.get("type") == "agent":
            reply = env[op.inputs[0]]
            action = reply.get("action") or {}
            if "error" in action:  # the model's mistake is the observation
                return {op.outputs[0]: node_outputs(text=f"Error: {action['error']}")}, {
                    "mistake": action["error"]
                }
            tool, arguments = action["tool"], action["arguments"]
            hints = (node.get("toolResources") or {}).get(tool) or node.get("resources") or {}
        else:
            tool = node["tool"]
            arguments = self._scope(env, op.node).fill(node.get("args") or {})
            hints = node.get("resources") or {}
        call = ToolCall(
            key=key,
            tool=tool,
            arguments=arguments,
            workspace=self.workspace,
            pool=op.pool,
            timeout_s=node.get("timeoutSeconds"),
            memory_bytes=op.attributes.get("memory_bytes"),
            cpu=op.attributes.get("cpu") or hints.get("cpu"),
            program=self.program(op.node),
        )
        # a tool acts on the world: what the run did before it must be on disk first, so a
        # resumed run never repeats a finished step's side effect
        await self.runtime.checkpoints.durable()
        with self.telemetry.tool(tool, key, op.pool):
            try:
                result: ToolResult = await self.backend.tool(call)
            except (ValueError, OSError) as error:
                raise RunError(f"tool call {key} ({tool}) failed: {error}") from None
        self.runtime.record_tool(tool, result.seconds)
        self.telemetry.tool_calls.labels(tool, "ok" if result.ok else "error").inc()
        if node.get("type") != "agent" and (result.error or result.exit_code is None):
            # a tool that could not run or crashed (a non-zero exit code is an output)
            raise RunError(f"tool call {key} ({tool}) failed: {result.error or result.text}")
        value = node_outputs(
            text=result.text,
            stdout=result.stdout,
            stderr=result.stderr,
            exitCode=result.exit_code,
            value=result.value,
        )
        details = {
            "tool": tool,
            "ok": result.ok,
            "exit_code": result.exit_code,
            "seconds": result.seconds,
            "peak_memory_bytes": result.peak_memory_bytes,
            "events": result.events,
        }
        return {op.outputs[0]: value}, details

    async def _loop(self, unit: _Unit, env: dict[str, Any], turns: tuple[int, ...]):
        """Turns until the model answers or turns run out; outputs: (text, turns, history, kv)."""
        loop = unit.loop
        values = [env[name] for name in loop.init]
        node = self._node(loop.node)
        with self.telemetry.agent(loop.node, node.get("model"), self.run_id):
            while True:
                turn = values[1]
                scope = dict(env) | dict(zip(loop.turn_args, values, strict=True))
                await self._block(units_of(loop.turn), scope, (*turns, turn))
                forwarded = [scope[name] for name in loop.forwarded]
                if not scope[loop.condition]:
                    break
                act = dict(env) | dict(zip(loop.act_args, forwarded, strict=True))
                await self._block(units_of(loop.act), act, (*turns, turn))
                values = [act[name] for name in loop.yielded]
        reply = forwarded[0]
        action = reply.get("action") or {}
        if "answer" in action:
            text = action["answer"]
        else:
            text = f"[no answer after {forwarded[1]} turns] {reply.get('raw', '')}".strip()
        return dict(zip(loop.outputs, [text, *forwarded[1:]], strict=True))

    # -- helpers ----------------------------------------------------------------------------

    async def _tool_schemas(self, tools: list[str]) -> dict[str, dict[str, Any]]:
        schemas = getattr(self.backend, "tool_schemas", None)
        if schemas is None:
            return {name: {"type": "object"} for name in tools}
        return await schemas(tools)

    def _model(self, model_id: str, node: str | None) -> ModelSpec:
        """The model the node's document declares with this catalog id."""
        document = self._scope({}, node).document()
        for key, ref in document["spec"].get("models", {}).items():
            if ref["id"] == model_id:
                return self._model_key(key, node)
        return ModelSpec(model_id)

    def _model_key(self, key: str, node: str | None) -> ModelSpec:
        ref = self._scope({}, node).document()["spec"]["models"][key]
        weights = ref.get("weights") or {}
        path = weights.get("path")
        return ModelSpec(
            ref["id"],
            weights.get("format"),
            (self._base(node) / path).resolve() if path else None,
        )

    def _base(self, node: str | None) -> Path:
        """Paths in a subgraph's document are relative to its file."""
        base = self.options.base_dir
        prefix = (node or "").rpartition("/")[0]
        while prefix:
            head, _, _ = prefix.rpartition("/")
            parent = self._scope({}, head + "/" if head else None)
            ref = parent.node(prefix)["ref"]
            base = base / Path(ref).parent
            prefix = head
        return base


def _release_ops(steps: list[PlanOp | PlanLoop]) -> list[PlanOp]:
    found = []
    for step in steps:
        if isinstance(step, PlanLoop):
            found += _release_ops(step.turn) + _release_ops(step.act)
        elif step.kind == "kv.release":
            found.append(step)
    return found


def _first_messages(
    scope: Scope, node: dict[str, Any], history: Any, tools: dict[str, dict[str, Any]]
) -> list[dict[str, str]]:
    """A turn's messages: the loop's history, which starts as the rendered prompt."""
    if isinstance(history, list):
        return history
    system = scope.render(node["instructions"]) + "\n\n" + describe_tools(tools, {})
    return [{"role": "system", "content": system}, {"role": "user", "content": as_text(history)}]


def _reply(
    text: str, messages: list[dict[str, str]], tools: dict[str, dict[str, Any]], finish: str
) -> dict[str, Any]:
    """A turn's reply: the raw text, what it asks for, and the conversation it extends."""
    action = parse_reply(text, tools)
    if isinstance(action, Mistake) and finish == "length":
        action = Mistake(f"{action.error}: the reply was cut off at max_tokens; be shorter")
    if isinstance(action, ToolAction):
        parsed: dict[str, Any] = {"tool": action.tool, "arguments": action.arguments}
    elif isinstance(action, Answer):
        parsed = {"answer": action.text}
    else:
        parsed = {"error": action.error}
    return {"raw": text, "action": parsed, "messages": messages}


def _observe(history: Any, reply: dict[str, Any], observation: Any) -> list[dict[str, str]]:
    """The next turn's history: this turn's messages, the model's reply, the tool's result."""
    messages = list(reply["messages"])
    messages.append({"role": "assistant", "content": reply["raw"]})
    messages.append({"role": "user", "content": "Observation:\n" + as_text(observation)})
    return messages


def _parse(text: str, parse: dict[str, Any], op: PlanOp) -> Any:
    fmt = parse["format"]
    if fmt == "lines":
        return [line for line in text.splitlines() if line.strip()]
    if fmt == "json":
        start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
        try:
            return json.JSONDecoder().raw_decode(text[max(start, 0) :])[0]
        except json.JSONDecodeError as error:
            raise RunError(f"step {op.node}: the text is not JSON ({error.msg})") from None
    match = re.search(parse["pattern"], text)
    if match is None:
        raise RunError(f"step {op.node}: the pattern {parse['pattern']!r} does not match")
    return match.groupdict() or match.group(0)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


__all__ = [
    "InputError",
    "RunError",
    "RunOptions",
    "RunResult",
    "Runtime",
    "bind_inputs",
    "units_of",
]
