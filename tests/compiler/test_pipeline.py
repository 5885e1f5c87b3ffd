"""Every example through the whole pipeline; print -> parse -> print is the identity."""

from pathlib import Path

import pytest
from xdsl.dialects import scf
from xdsl.parser import Parser

import hetagent
from hetagent.compiler import compile_plan, lower, print_generic
from hetagent.compiler.dialects import llm, tool
from hetagent.compiler.dialects.hw import AFFINITY
from hetagent.compiler.emit import ExecutablePlan, PlanLoop
from hetagent.compiler.placement import Placement, Pool, placed_ops, trivial_placement

POOLS = (Pool("gpu", "h100", 8), Pool("npu", "gaudi3", 8), Pool("cpu", "xeon-8480", 4))


def split_placement(module) -> Placement:
    """Prefill on gpu, decode on npu, the rest on cpu: every kind of transfer appears."""
    phases = {
        "llm.prefill": "gpu",
        "llm.tokenize": "gpu",
        "retr.embed": "gpu",
        "llm.decode": "npu",
        "llm.detokenize": "npu",
    }
    return Placement(
        POOLS, {op.attr("id"): phases.get(op.name, "cpu") for op in placed_ops(module)}
    )


AGENTS = sorted((Path(__file__).parents[2] / "examples" / "agents").glob("*.yaml"))


@pytest.fixture(scope="module", params=AGENTS, ids=lambda p: p.stem)
def graph(request):
    return hetagent.load(request.param)


@pytest.mark.parametrize("level", ["agent", "ops", "placed"])
def test_printed_ir_parses_back_to_the_same_text(graph, level):
    placement = split_placement(lower(graph, "ops")) if level == "placed" else None
    text = print_generic(lower(graph, level, placement))
    module = Parser(hetagent.compiler.dialects.make_context(), text).parse_module()
    module.verify()
    assert print_generic(module) == text


def test_every_operator_is_placed_and_the_plan_round_trips(graph):
    module = lower(graph, "ops")
    plan = compile_plan(graph, split_placement(module))
    assert ExecutablePlan.model_validate_json(plan.model_dump_json()) == plan
    placed = lower(graph, "placed", split_placement(module))
    unplaced = [
        op.attr("id")
        for op in placed.walk()
        if hasattr(op, "attr") and AFFINITY not in op.attributes
    ]
    assert unplaced == []
    assert {stage.pool for stage in plan.stages} <= {"gpu", "npu", "cpu"}
    assert any(t.kind == "kv" and (t.source, t.target) == ("gpu", "npu") for t in plan.transfers)


def test_react_loop_turn_holds_prefill_and_decode_and_act_holds_the_tool():
    graph = hetagent.load(AGENTS[0].parent / "coding-agent.yaml")
    module = lower(graph, "ops")
    (loop,) = [op for op in module.walk() if isinstance(op, scf.WhileOp)]
    turn = [type(op) for op in loop.before_region.block.ops]
    assert llm.PrefillOp in turn and llm.DecodeOp in turn
    assert tool.ExecOp in [type(op) for op in loop.after_region.block.ops]
    plan = compile_plan(graph, split_placement(module))
    (plan_loop,) = [s for s in plan.functions["coding-agent"].steps if isinstance(s, PlanLoop)]
    assert plan_loop.max_turns == 40 and plan_loop.p95_turns == 30
    assert {"llm.prefill", "llm.decode"} <= {step.kind for step in plan_loop.turn}
    assert "tool.exec" in {step.kind for step in plan_loop.act}


def test_fan_out_stays_parallel():
    graph = hetagent.load(AGENTS[0].parent / "deep-research.yaml")
    module = lower(graph, "agent")
    loops = [op for op in module.walk() if isinstance(op, scf.WhileOp)]
    assert len(loops) == 4
    # no research loop reads another's result: they depend only on the planner's output
    results = {id(result) for loop in loops for result in loop.results}
    for loop in loops:
        for operand in loop.operands:
            assert id(operand) not in results


def test_trivial_placement_puts_model_ops_on_the_accelerator(graph):
    module = lower(graph, "ops")
    placement = trivial_placement(module, POOLS, accelerators={"gpu", "npu"})
    for op in placed_ops(module):
        expected = "gpu" if op.name.startswith(("llm.", "retr.embed")) else "cpu"
        assert placement.assignment[op.attr("id")] == expected, op.name


def test_subgraph_becomes_a_call_of_its_own_function(tmp_path):
    header = "apiVersion: hetagent.dev/v1alpha1\nkind: AgentGraph\n"
    (tmp_path / "child.yaml").write_text(
        header
        + """\
metadata: {name: child}
spec:
  inputs: {topic: {}}
  models: {m: {id: smollm2-135m}}
  outputs: {summary: "${nodes.write.outputs.text}"}
  nodes: [{name: write, type: llm, model: m, prompt: "About ${inputs.topic}"}]
"""
    )
    (tmp_path / "parent.yaml").write_text(
        header
        + """\
metadata: {name: parent}
spec:
  inputs: {q: {}}
  outputs: {report: "${nodes.research.outputs.summary}"}
  nodes: [{name: research, type: subgraph, ref: child.yaml, inputs: {topic: "${inputs.q}"}}]
"""
    )
    module = lower(hetagent.load(tmp_path / "parent.yaml"), "ops")
    text = print_generic(module)
    assert '"func.call"(%0) <{callee = @child}> {agent.id = "research"' in text
    assert 'sym_visibility = "private"' in text and 'id = "child/write.prefill"' in text
    plan = compile_plan(hetagent.load(tmp_path / "parent.yaml"), split_placement(module))
    assert set(plan.functions) == {"parent", "child"}
    assert plan.functions["parent"].outputs == {"report": "research"}
