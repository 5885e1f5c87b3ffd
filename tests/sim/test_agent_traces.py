"""Traces of an example agent's own programs follow its graph."""

from pathlib import Path

import hetagent
from hetagent.backends.sim.agent_traces import from_agent

AGENTS = Path(__file__).parents[2] / "examples" / "agents"


def test_parallel_llm_steps_become_sub_agents_joined_by_the_next_step():
    graph = hetagent.load(AGENTS / "deep-research.yaml")
    program = from_agent(graph, 1, seed=0).programs[0]
    plan, synthesize = program.turns[0], program.turns[-1]
    assert plan.ctx == "plan" and synthesize.ctx == "synthesize"
    assert {c.id for c in plan.fanout} == {
        "p0/background", "p0/critiques", "p0/evidence", "p0/recent"
    }  # fmt: skip


def test_react_loop_turns_use_its_tools_and_declared_tokens():
    graph = hetagent.load(AGENTS / "coding-agent.yaml")
    node = graph.node("fix")
    turns = [t for p in from_agent(graph, 50, seed=1).programs for t in p.turns if t.ctx == "fix"]
    assert {t.tool for t in turns if t.tool} <= {*node.tools, "host"}  # host: steps after it
    assert all(t.output == (node.expected_output_tokens or node.max_tokens) for t in turns)
    per_program = [sum(t.ctx == "fix" for t in p.turns) for p in from_agent(graph, 200).programs]
    assert max(per_program) <= node.max_turns


def test_host_steps_before_the_first_llm_step_delay_it():
    graph = hetagent.load(AGENTS / "rag-qa.yaml")  # retrieve, then answer
    assert all(p.delay > 0 for p in from_agent(graph, 5).programs)


def test_arrivals_follow_the_declared_rate():
    graph = hetagent.load(AGENTS / "rag-qa.yaml")
    trace = from_agent(graph, 2000, seed=3)
    rate = len(trace.programs) / trace.programs[-1].arrival
    assert abs(rate / graph.spec.traffic.arrival_rate_per_second - 1) < 0.1
