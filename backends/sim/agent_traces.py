"""Traces of an agent's own programs: one program per request to the AgentGraph, with the
token counts and durations the planner plans with, so `tco_sim` can check the planner's
promise (its SLA and cost) under queueing.

A program walks the agent's steps in dependency order (networkx topological generations):
- an `llm` node is one turn in its own conversation (`ctx` = the node), an `agent` node (ReAct
  loop) one conversation of 1 + Poisson(expectedTurns - 1) turns (at most maxTurns), each turn
  followed by one of its tools;
- token counts are the compiler's: `expectedInputTokens` / `expectedOutputTokens`, else the
  literal prompt's length at CHARS_PER_TOKEN plus the referenced steps' outputs, and maxTokens;
- host steps (tools, retrieval, transforms) take their declared durations (the planner's
  defaults otherwise) and run between the LLM steps around them: steps of one generation in
  parallel (the longest counts); LLM nodes of one generation are sub-agents (`fanout`);
- tool durations are lognormal (sigma 0.8) with the declared duration as their mean.
"""

from __future__ import annotations

import math
import random

import networkx as nx

from hetagent.backends.sim.traces import Program, Trace, TraceError, Turn
from hetagent.compiler.frontend import CHARS_PER_TOKEN
from hetagent.planner.plan import DEFAULT_TOOL_SECONDS, HOST_OP_SECONDS
from hetagent.spec import AgentGraph, AgentNode, LlmNode, Reference, parse_references

TOOL_SIGMA = 0.8
OBSERVATION_TOKENS = 256  # a tool result appended to a ReAct conversation
HOST_SECONDS = {
    "retrieve": HOST_OP_SECONDS["retr.search"],
    "transform": HOST_OP_SECONDS["data.template"],
}


def _tokens(graph: AgentGraph, node, outputs: dict[str, int]) -> int:
    if node.expected_input_tokens:
        return node.expected_input_tokens
    total = 0
    for _, text in node.templated_fields():
        total += len(text) // CHARS_PER_TOKEN
        for ref in parse_references(text):
            if isinstance(ref, Reference) and ref.scope == "nodes":
                total += outputs.get(ref.name, 0)
    return max(total, 1)


def _duration(rng: random.Random, mean: float) -> float:
    if mean <= 0:
        return 0.0
    return mean * math.exp(TOOL_SIGMA * rng.gauss(0.0, 1.0) - TOOL_SIGMA**2 / 2)


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _node_turns(graph: AgentGraph, node, rng: random.Random, outputs: dict[str, int]) -> list[Turn]:
    model = graph.spec.models[node.model].id
    output = node.expected_output_tokens or node.max_tokens
    outputs[node.name] = output
    first = _tokens(graph, node, outputs)
    if isinstance(node, LlmNode):
        return [Turn(first, output, ctx=node.name, model=model)]
    expected = node.expected_turns or node.p95_turns or node.max_turns
    n = min(node.max_turns, 1 + _poisson(rng, expected - 1))
    turns = []
    for i in range(n):
        tool = None if i == n - 1 else rng.choice(node.tools)
        mean = node.expected_tool_seconds.get(tool, DEFAULT_TOOL_SECONDS) if tool else 0.0
        turns.append(
            Turn(
                first if i == 0 else OBSERVATION_TOKENS,
                output,
                tool,
                _duration(rng, mean) if tool else 0.0,
                ctx=node.name,
                model=model,
            )
        )
    return turns


def _host_seconds(node, rng: random.Random) -> float:
    if node.type == "tool":
        return _duration(rng, node.expected_duration_seconds or DEFAULT_TOOL_SECONDS)
    if node.type in HOST_SECONDS:
        return HOST_SECONDS[node.type]
    raise TraceError(f"node {node.name}: {node.type} nodes are not simulated yet")


def _program(graph: AgentGraph, pid: str, arrival: float, rng: random.Random) -> Program:
    turns: list[Turn] = []
    outputs: dict[str, int] = {}
    delay = 0.0  # host time before the first LLM turn
    pending = 0.0  # host time since the last LLM turn
    for level in nx.topological_generations(graph.dag()):
        nodes = [graph.node(name) for name in sorted(level)]
        llms = [n for n in nodes if isinstance(n, LlmNode | AgentNode)]
        pending += max((_host_seconds(n, rng) for n in nodes if n not in llms), default=0.0)
        if not llms:
            continue
        if not turns:
            delay, pending = pending, 0.0
        if len(llms) == 1:
            new = _node_turns(graph, llms[0], rng, outputs)
            if turns:
                turns[-1] = _then(turns[-1], pending, ())
            turns.extend(new)
        else:
            if not turns:
                raise TraceError("agents that start with parallel LLM steps are not simulated yet")
            children = tuple(
                Program(f"{pid}/{n.name}", 0.0, tuple(_node_turns(graph, n, rng, outputs)))
                for n in llms
            )
            turns[-1] = _then(turns[-1], pending, children)  # joined by the next turn
        pending = 0.0
    if not turns:
        raise TraceError(f"agent {graph.metadata.name} has no LLM step to simulate")
    if pending:  # host steps after the last LLM turn
        turns[-1] = _then(turns[-1], pending, ())
    return Program(pid, arrival, tuple(turns), delay=delay)


def _then(turn: Turn, seconds: float, fanout: tuple[Program, ...]) -> Turn:
    """`turn` followed by `seconds` of host work and `fanout` sub-agents, after whatever
    already followed it (the simulator runs a turn's tool and its sub-agents side by side)."""
    seconds += turn.tool_seconds
    fanout = turn.fanout + fanout
    tool = turn.tool or ("host" if seconds or fanout else None)
    return Turn(turn.input, turn.output, tool, seconds, fanout, turn.ctx, turn.model)


def from_agent(graph: AgentGraph, programs: int, *, rate: float | None = None,
               seed: int = 0) -> Trace:  # fmt: skip
    """`programs` requests to the agent at its declared traffic (or `rate`/s): Poisson, or Gamma
    inter-arrivals with the declared burstiness as their coefficient of variation."""
    traffic = graph.spec.traffic
    rate = rate if rate is not None else (traffic.arrival_rate_per_second if traffic else 1.0)
    if not rate > 0:
        raise TraceError("the agent declares no traffic: give a rate above 0")
    cv = max(1.0, traffic.burstiness if traffic else 1.0)
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(programs):
        shape = 1.0 / (cv * cv)
        t += rng.gammavariate(shape, 1.0 / (rate * shape))
        out.append(_program(graph, f"p{i}", t, rng))
    header = {"agent": graph.metadata.name, "programs": programs, "rate": rate, "seed": seed,
              "arrival": f"gamma(cv={cv:g})"}  # fmt: skip
    return Trace(tuple(out), header)
