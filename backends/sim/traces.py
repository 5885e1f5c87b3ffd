"""Agent program traces: the JSONL format the simulator runs, and generators fitted to published
agent traces (`../shared/research/kv-leases.md`, "Workload statistics").

Format (`hetagent-trace/v1`), one JSON object per line:

- an optional first line `{"header": {"format": "hetagent-trace/v1", "kind": ..., "seed": ...,
  "rate": R | null, "concurrency": C | null, "arrival": "poisson" | "bursty"}}`. With
  `concurrency` set the simulator runs the trace closed-loop: at most C programs are in flight,
  a program starts at its arrival time or when a slot frees, whichever is later.
- then one program per line:
  `{"id": "p0", "arrival": 0.53, "model": "llama-3.1-8b", "prefix": {"id": "sys", "tokens": 8000},
    "turns": [{"input": 2000, "output": 580, "tool": "Bash", "tool_seconds": 0.9}, ...]}`
  - `arrival`: seconds from the start of the trace; `model` (optional): a catalog model id, the
    simulator's `--model` when absent; `prefix` (optional): a prompt prefix shared by every
    program with the same id (a system prompt), counted inside turn 1's input; `delay`
    (optional): seconds of host work (retrieval, a tool) before turn 1.
  - a turn is one LLM call: `input` is the new prompt tokens it appends (turn 1: the whole first
    prompt; later turns: the tool result and any new instructions), `output` the tokens it
    generates. The prompt of turn i is everything before it: inputs 1..i and outputs 1..i-1.
  - `tool` and `tool_seconds`: the tool the program runs after this turn and how long it takes
    (the true duration; only an oracle policy is told it). The last turn has none.
  - `fanout` (optional): programs (same shape, without `arrival`) this turn spawns when it
    ends, as sub-agents; they run in parallel and the parent's next turn arrives once they all
    finished and the turn's own tool (if any) returned. Their ids are `<parent>/<id>`.
  - `ctx` (optional, default "main"): the conversation a turn continues. Turns of one program
    with different `ctx` (different LLM nodes of an agent) keep separate KV.

Generators: `swe`, `claude-code`, `bfcl`, `deep-research`, each a small set of distributions
below with the published statistic it is fitted to next to it. Arrivals are Poisson or bursty
(Gamma inter-arrivals with coefficient of variation 2, as BurstGPT fits), at `rate` programs/s,
or closed-loop at `concurrency`.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "hetagent-trace/v1"
KINDS = ("swe", "claude-code", "bfcl", "deep-research")
ARRIVALS = ("poisson", "bursty")
BURSTY_SHAPE = 0.25  # Gamma shape: CV = 1/sqrt(shape) = 2 (BurstGPT's bursty fits have CV > 1)
MAX_CONTEXT = 120_000  # a program ends before its prompt outgrows a 128k-context model


class TraceError(ValueError):
    """A trace file or generator option is invalid (the message names the line and field)."""


@dataclass(frozen=True)
class Turn:
    input: int
    output: int
    tool: str | None = None
    tool_seconds: float = 0.0
    fanout: tuple[Program, ...] = ()
    ctx: str = "main"
    model: str | None = None


@dataclass(frozen=True)
class Program:
    id: str
    arrival: float
    turns: tuple[Turn, ...]
    model: str | None = None
    prefix_id: str | None = None
    prefix_tokens: int = 0
    delay: float = 0.0  # host work (retrieval, tools) before the first turn, seconds

    def count(self) -> int:
        """This program and all its sub-agents."""
        return 1 + sum(child.count() for t in self.turns for child in t.fanout)


@dataclass(frozen=True)
class Trace:
    programs: tuple[Program, ...]
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def concurrency(self) -> int | None:
        return self.header.get("concurrency")


# ---- reading and writing ----------------------------------------------------------------------


def _program_to_json(p: Program, parent: str | None = None) -> dict[str, Any]:
    """A program as its JSON line; a sub-agent's id is written relative to its parent's."""
    out: dict[str, Any] = {"id": p.id if parent is None else p.id.removeprefix(parent + "/")}
    if parent is None:
        out["arrival"] = p.arrival
    if p.model:
        out["model"] = p.model
    if p.prefix_id:
        out["prefix"] = {"id": p.prefix_id, "tokens": p.prefix_tokens}
    if p.delay:
        out["delay"] = p.delay
    turns = []
    for t in p.turns:
        turn: dict[str, Any] = {"input": t.input, "output": t.output}
        if t.tool is not None:
            turn["tool"] = t.tool
            turn["tool_seconds"] = t.tool_seconds
        if t.fanout:
            turn["fanout"] = [_program_to_json(c, p.id) for c in t.fanout]
        if t.ctx != "main":
            turn["ctx"] = t.ctx
        if t.model:
            turn["model"] = t.model
        turns.append(turn)
    out["turns"] = turns
    return out


def dump(trace: Trace, path: Path) -> None:
    with open(path, "w") as f:
        f.write(json.dumps({"header": {"format": FORMAT, **trace.header}}) + "\n")
        for p in trace.programs:
            f.write(json.dumps(_program_to_json(p)) + "\n")


def _int(data: dict, key: str, where: str, minimum: int = 0) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TraceError(f"{where}.{key}: expected an integer >= {minimum}, got {value!r}")
    return value


def _number(data: dict, key: str, where: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise TraceError(f"{where}.{key}: expected a number >= 0, got {value!r}")
    return float(value)


def _parse_program(data: Any, where: str, arrival: float | None) -> Program:
    if not isinstance(data, dict):
        raise TraceError(f"{where}: expected a JSON object")
    unknown = set(data) - {"id", "arrival", "model", "prefix", "turns", "delay"}
    if unknown:
        raise TraceError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    pid = data.get("id")
    if not isinstance(pid, str) or not pid:
        raise TraceError(f"{where}.id: expected a non-empty string")
    if arrival is None:
        arrival = _number(data, "arrival", where)
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise TraceError(f"{where}.model: expected a model id string")
    prefix = data.get("prefix")
    prefix_id, prefix_tokens = None, 0
    if prefix is not None:
        if not isinstance(prefix, dict) or not isinstance(prefix.get("id"), str):
            raise TraceError(f"{where}.prefix: expected {{'id': str, 'tokens': int}}")
        prefix_id, prefix_tokens = prefix["id"], _int(prefix, "tokens", f"{where}.prefix")
    turns_data = data.get("turns")
    if not isinstance(turns_data, list) or not turns_data:
        raise TraceError(f"{where}.turns: expected a non-empty list")
    turns = []
    for i, t in enumerate(turns_data):
        tw = f"{where}.turns[{i}]"
        if not isinstance(t, dict):
            raise TraceError(f"{tw}: expected a JSON object")
        unknown = set(t) - {"input", "output", "tool", "tool_seconds", "fanout", "ctx", "model"}
        if unknown:
            raise TraceError(f"{tw}: unknown field(s) {', '.join(sorted(unknown))}")
        tool = t.get("tool")
        if tool is not None and not isinstance(tool, str):
            raise TraceError(f"{tw}.tool: expected a string")
        seconds = _number(t, "tool_seconds", tw) if tool is not None else 0.0
        fanout = t.get("fanout", [])
        if not isinstance(fanout, list):
            raise TraceError(f"{tw}.fanout: expected a list of programs")
        children = tuple(_parse_program(c, f"{tw}.fanout[{j}]", 0.0) for j, c in enumerate(fanout))
        children = tuple(
            Program(f"{pid}/{c.id}", 0.0, c.turns, c.model, c.prefix_id, c.prefix_tokens, c.delay)
            for c in children
        )
        ctx = t.get("ctx", "main")
        if not isinstance(ctx, str):
            raise TraceError(f"{tw}.ctx: expected a string")
        turn_model = t.get("model")
        if turn_model is not None and not isinstance(turn_model, str):
            raise TraceError(f"{tw}.model: expected a model id string")
        turns.append(
            Turn(
                input=_int(t, "input", tw, 1),
                output=_int(t, "output", tw, 1),
                tool=tool,
                tool_seconds=seconds,
                fanout=children,
                ctx=ctx,
                model=turn_model,
            )
        )
    delay = _number(data, "delay", where) if "delay" in data else 0.0
    return Program(pid, arrival, tuple(turns), model, prefix_id, prefix_tokens, delay)


def parse(lines: Iterable[str], source: str = "trace") -> Trace:
    header: dict[str, Any] = {}
    programs: list[Program] = []
    seen: set[str] = set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{n}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{where}: not JSON ({exc.msg})") from None
        if isinstance(data, dict) and "header" in data:
            if programs or header:
                raise TraceError(f"{where}: the header must be the first line")
            header = dict(data["header"])
            if header.get("format", FORMAT) != FORMAT:
                raise TraceError(f"{where}: unsupported format {header.get('format')!r}")
            header.pop("format", None)
            conc = header.get("concurrency")
            if conc is not None and (not isinstance(conc, int) or conc < 1):
                raise TraceError(f"{where}: header.concurrency must be an integer >= 1")
            continue
        program = _parse_program(data, where, None)
        if program.id in seen:
            raise TraceError(f"{where}.id: duplicate program id {program.id!r}")
        seen.add(program.id)
        programs.append(program)
    if not programs:
        raise TraceError(f"{source}: no programs")
    programs.sort(key=lambda p: p.arrival)
    return Trace(tuple(programs), header)


def load(path: Path) -> Trace:
    try:
        with open(path) as f:
            return parse(f, str(path))
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc.strerror}") from None


# ---- distributions ----------------------------------------------------------------------------


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(sigma * rng.gauss(0.0, 1.0))


def _tokens(rng: random.Random, median: float, sigma: float, lo: int = 1, hi: int = 32_000) -> int:
    return max(lo, min(hi, round(_lognormal(rng, median, sigma))))


@dataclass(frozen=True)
class ToolMix:
    """A mixture of lognormal tool durations: (tool name, weight, median s, sigma, heavy tail)."""

    parts: tuple[tuple[str, float, float, float, bool], ...]

    def sample(self, rng: random.Random, tail_scale: float) -> tuple[str, float]:
        x = rng.random() * sum(p[1] for p in self.parts)
        part = self.parts[-1]
        for candidate in self.parts:
            x -= candidate[1]
            if x <= 0:
                part = candidate
                break
        name, _, median, sigma, tail = part
        seconds = min(_lognormal(rng, median, sigma), 900.0)
        return name, seconds * (tail_scale if tail else 1.0)


@dataclass(frozen=True)
class Kind:
    """One generator: distributions of turn count, token lengths and tool durations."""

    turns_median: float
    turns_sigma: float
    prefix_tokens: int  # shared system prompt (tools, instructions)
    task_tokens: tuple[float, float]  # (median, sigma) of turn 1's own input
    input_tokens: tuple[float, float]  # of later turns' new input (tool results)
    output_tokens: tuple[float, float]
    tools: ToolMix


KIND_STATS: dict[str, Kind] = {
    # Claude-Code-like coding agent: 25.6 tool calls/task (p50 20, p90 56) -> lognormal turns
    # (median 20, sigma ln(56/20)/1.28 = 0.8); tool durations p50 0.06 s, p90 1.8 s, p99 120 s,
    # 76% < 1 s, 92% < 2 s: fast file/search tools, Bash (p50 0.94 s, mean 3.7 s), and a heavy
    # tail of sub-agent and long commands (~100 s); context/call mean 32.6k; output p50 580.
    "claude-code": Kind(
        turns_median=20,
        turns_sigma=0.8,
        prefix_tokens=8000,
        task_tokens=(2000, 0.6),
        input_tokens=(900, 1.1),
        output_tokens=(580, 0.8),
        tools=ToolMix(
            (
                ("Read", 0.45, 0.03, 0.8, False),
                ("Grep", 0.25, 0.08, 0.9, False),
                ("Bash", 0.26, 0.94, 0.9, False),
                ("Task", 0.04, 60.0, 1.0, True),
            )
        ),
    ),
    # SWE-bench agents: 10.9 turns on average (median 9, sigma 0.6 -> mean 10.8); open-model
    # coding agents' Bash p50 6.2 s; the large public trace set's 659 output tokens per call.
    "swe": Kind(
        turns_median=9,
        turns_sigma=0.6,
        prefix_tokens=4000,
        task_tokens=(1500, 0.5),
        input_tokens=(1200, 1.0),
        output_tokens=(400, 0.8),
        tools=ToolMix(
            (
                ("str_replace_editor", 0.45, 0.2, 0.8, False),
                ("bash", 0.45, 3.0, 1.2, False),
                ("pytest", 0.10, 25.0, 1.0, True),
            )
        ),
    ),
    # BFCL multi-turn function calling: 6.3 turns; short API-like calls; small contexts.
    "bfcl": Kind(
        turns_median=5.5,
        turns_sigma=0.5,
        prefix_tokens=1500,
        task_tokens=(300, 0.5),
        input_tokens=(250, 0.8),
        output_tokens=(90, 0.6),
        tools=ToolMix((("api", 0.9, 0.3, 0.9, False), ("api-slow", 0.1, 4.0, 1.0, True))),
    ),
    # Deep research: an orchestrator whose turns fan out to parallel search sub-agents (below);
    # gap between turns mean 13 s with a heavy tail (the large public trace set).
    "deep-research": Kind(
        turns_median=4,
        turns_sigma=0.3,
        prefix_tokens=3000,
        task_tokens=(500, 0.5),
        input_tokens=(1500, 0.6),
        output_tokens=(600, 0.6),
        tools=ToolMix((("plan", 1.0, 0.5, 0.5, False),)),
    ),
}
RESEARCHER = Kind(  # a deep-research sub-agent: web search and page fetches
    turns_median=6,
    turns_sigma=0.4,
    prefix_tokens=2000,
    task_tokens=(300, 0.4),
    input_tokens=(2000, 0.7),
    output_tokens=(250, 0.6),
    tools=ToolMix(
        (
            ("search", 0.5, 1.5, 0.6, False),
            ("fetch", 0.45, 3.0, 0.9, False),
            ("browse", 0.05, 20.0, 1.0, True),
        )
    ),
)


def _turns(kind: Kind, rng: random.Random, tail_scale: float, prefix: int) -> list[Turn]:
    n = max(1, round(_lognormal(rng, kind.turns_median, kind.turns_sigma)))
    n = min(n, 200)
    turns: list[Turn] = []
    context = prefix + _tokens(rng, *kind.task_tokens)
    new_input = context
    for i in range(n):
        output = _tokens(rng, *kind.output_tokens, hi=4096)
        last = i == n - 1
        nxt = 0 if last else _tokens(rng, *kind.input_tokens)
        if not last and context + output + nxt > MAX_CONTEXT:
            last = True  # the context is full: the program ends here
        tool, seconds = (None, 0.0) if last else kind.tools.sample(rng, tail_scale)
        turns.append(Turn(new_input, output, tool, seconds))
        if last:
            break
        context += output + nxt
        new_input = nxt
    return turns


def generate(
    kind: str,
    programs: int,
    *,
    rate: float | None = None,
    concurrency: int | None = None,
    arrival: str = "poisson",
    seed: int = 0,
    tail_scale: float = 1.0,
    model: str | None = None,
) -> Trace:
    """`programs` programs of `kind`, arriving at `rate`/s or closed-loop at `concurrency`."""
    if kind not in KIND_STATS:
        raise TraceError(f"unknown trace kind {kind!r}; choose one of {', '.join(KINDS)}")
    if programs < 1:
        raise TraceError(f"--programs must be at least 1, got {programs}")
    if (rate is None) == (concurrency is None):
        raise TraceError("give exactly one of --rate and --concurrency")
    if rate is not None and not rate > 0:
        raise TraceError(f"--rate must be above 0, got {rate}")
    if concurrency is not None and concurrency < 1:
        raise TraceError(f"--concurrency must be at least 1, got {concurrency}")
    if arrival not in ARRIVALS:
        raise TraceError(f"unknown arrival process {arrival!r}; choose poisson or bursty")
    if not tail_scale > 0:
        raise TraceError(f"--tail-scale must be above 0, got {tail_scale}")
    rng = random.Random(seed)
    stats = KIND_STATS[kind]
    out: list[Program] = []
    t = 0.0
    for i in range(programs):
        if rate is not None:
            if arrival == "poisson":
                t += rng.expovariate(rate)
            else:
                t += rng.gammavariate(BURSTY_SHAPE, 1.0 / (rate * BURSTY_SHAPE))
        turns = _turns(stats, rng, tail_scale, stats.prefix_tokens)
        if kind == "deep-research":
            turns = _with_researchers(f"p{i}", turns, rng, tail_scale)
        out.append(Program(f"p{i}", t, tuple(turns), model, f"{kind}-sys", stats.prefix_tokens))
    header = {
        "kind": kind,
        "programs": programs,
        "model": model,
        "seed": seed,
        "rate": rate,
        "concurrency": concurrency,
        "arrival": arrival if rate is not None else None,
        "tail_scale": tail_scale,
    }
    return Trace(tuple(out), header)


def _with_researchers(
    parent: str, turns: list[Turn], rng: random.Random, tail_scale: float
) -> list[Turn]:
    """Every orchestrator turn but the last fans out to 2-6 researchers."""
    out = []
    for i, turn in enumerate(turns):
        if turn.tool is None:
            out.append(turn)
            continue
        children = tuple(
            Program(
                f"{parent}/r{i}.{j}",
                0.0,
                tuple(_turns(RESEARCHER, rng, tail_scale, RESEARCHER.prefix_tokens)),
                None,
                "researcher-sys",
                RESEARCHER.prefix_tokens,
            )
            for j in range(rng.randint(2, 6))
        )
        out.append(Turn(turn.input, turn.output, turn.tool, turn.tool_seconds, children))
    return out


def summary(trace: Trace) -> dict[str, float]:
    """The statistics the generators are fitted to, measured on a trace (for checking)."""
    turns, tools, outputs = [], [], []
    for p in trace.programs:
        turns.append(len(p.turns))
        for t in p.turns:
            outputs.append(t.output)
            if t.tool is not None:
                tools.append(t.tool_seconds)
    tools.sort()
    outputs.sort()

    def q(xs: list[float], p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else 0.0

    return {
        "programs": len(trace.programs),
        "turns_mean": sum(turns) / len(turns),
        "tool_p50_s": q(tools, 0.5),
        "tool_p90_s": q(tools, 0.9),
        "tool_p99_s": q(tools, 0.99),
        "tool_under_1s": sum(1 for x in tools if x < 1) / len(tools) if tools else 0.0,
        "output_p50": q(outputs, 0.5),
    }


def regenerate(trace: Trace, seed: int) -> Trace:
    """The same generator and options as `trace`'s header, with another seed."""
    h = trace.header
    if h.get("agent"):
        raise TraceError("several seeds of an agent's trace: generate one file per seed")
    if h.get("kind") not in KIND_STATS or not h.get("programs"):
        raise TraceError("this trace has no generator header: several seeds need a generated trace")
    return generate(
        h["kind"],
        h["programs"],
        rate=h.get("rate"),
        concurrency=h.get("concurrency"),
        arrival=h.get("arrival") or "poisson",
        seed=seed,
        tail_scale=h.get("tail_scale", 1.0),
        model=h.get("model"),
    )
