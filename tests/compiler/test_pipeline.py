"""Every example through the whole pipeline; print -> parse -> print is the identity."""

from pathlib import Path

import pytest
from xdsl.dialects import scf
from xdsl.parser import Parser

import hetagent
from hetagent.compiler import compile_plan, lower, print_generic
from hetagent.compiler.dialects import llm, tool
from hetagent.compiler.dialects.base import HetOp
from hetagent.compiler.dialects.hw import AFFINITY
from hetagent.compiler.emit import ExecutablePlan, PlanLoop, PlanOp
from hetagent.compiler.placement import Placement, Pool, placed_ops

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
    plan = compile_plan(graph, split_placement(lower(graph, "ops")))
    assert ExecutablePlan.model_validate_json(plan.model_dump_json()) == plan
    placed = lower(graph, "placed", split_placement(lower(graph, "ops")))
    unplaced = [
        op.attr("id")
        for op in placed.walk()
        if isinstance(op, HetOp) and AFFINITY not in op.attributes
    ]
    assert unplaced == []
    ids = [op.attr("id") for op in placed.walk() if isinstance(op, HetOp)]
    assert len(ids) == len(set(ids))
    assert {stage.pool for stage in plan.stages} <= {"gpu", "npu", "cpu"}
    assert all(after < stage.id for stage in plan.stages for after in stage.after)
    assert any(t.kind == "kv" and (t.source, t.target) == ("gpu", "npu") for t in plan.transfers)


def test_lowering_leaves_no_agent_step(graph):
    module = lower(graph, "ops")
    assert not [
        op.name
        for op in module.walk()
        if op.name.split(".")[0] == "agent" and op.name != "agent.continue"
    ]


def test_every_reference_is_bound_to_a_value(graph):
    plan = compile_plan(graph, split_placement(lower(graph, "ops")))
    produced = {name for step in _all_steps(plan.steps) for name in step.outputs} | set(plan.inputs)
    for node in graph.spec.nodes:
        for output in node.outputs:
            assert plan.values[f"nodes.{node.name}.outputs.{output}"] in produced
    assert set(plan.outputs) == set(graph.spec.outputs)


def _all_steps(steps):
    for step in steps:
        yield step
        if isinstance(step, PlanLoop):
            yield from _all_steps(step.turn)
            yield from _all_steps(step.act)


def test_react_loop_turn_holds_prefill_and_decode_and_act_holds_the_tool():
    graph = hetagent.load(AGENTS[0].parent / "coding-agent.yaml")
    module = lower(graph, "ops")
    (loop,) = [op for op in module.walk() if isinstance(op, scf.WhileOp)]
    turn = [type(op) for op in loop.before_region.block.ops]
    assert llm.PrefillOp in turn and llm.DecodeOp in turn
    assert tool.ExecOp in [type(op) for op in loop.after_region.block.ops]
    plan = compile_plan(graph, split_placement(module))
    (plan_loop,) = [s for s in plan.steps if isinstance(s, PlanLoop)]
    assert plan_loop.max_turns == 40 and plan_loop.p95_turns == 30
    assert {"llm.prefill", "llm.decode"} <= {step.kind for step in plan_loop.turn}
    assert "tool.exec" in {step.kind for step in plan_loop.act}
    # turns are counted from 1: the loop starts at turn 1
    (first_turn,) = [s for s in plan.steps if s.outputs == [plan_loop.init[1]]]
    assert first_turn.attributes["value"] == 1


def test_fan_out_stays_parallel():
    graph = hetagent.load(AGENTS[0].parent / "deep-research.yaml")
    plan = compile_plan(graph, split_placement(lower(graph, "ops")))
    loops = [s for s in plan.steps if isinstance(s, PlanLoop)]
    assert len(loops) == 4
    loop_values = {name for loop in loops for name in loop.outputs}
    for step in plan.steps:
        if isinstance(step, PlanOp) and step.id and step.id.endswith(".prompt.template"):
            # each research loop starts from the planner's output, never another loop's
            assert not set(step.inputs) & loop_values, step.id


HEADER = "apiVersion: hetagent.dev/v1alpha1\nkind: AgentGraph\n"


def write(path: Path, text: str) -> Path:
    path.write_text(HEADER + text)
    return path


def test_a_stage_never_waits_on_a_later_stage(tmp_path):
    # a -> t (another pool) -> final, and a -> final: grouping a with final would form a cycle
    path = write(
        tmp_path / "g.yaml",
        """\
metadata: {name: g}
spec:
  models: {m: {id: smollm2-135m}}
  nodes:
    - {name: a, type: llm, model: m, prompt: "go"}
    - {name: t, type: tool, tool: shell, args: {c: "${nodes.a.outputs.text}"}}
    - name: final
      type: llm
      model: m
      prompt: "${nodes.a.outputs.text} ${nodes.t.outputs.stdout}"
""",
    )
    graph = hetagent.load(path)
    plan = compile_plan(graph, split_placement(lower(graph, "ops")))
    stage_of = {op: stage.id for stage in plan.stages for op in stage.ops}
    assert stage_of["a.tokenize"] != stage_of["final.tokenize"]
    assert all(after < stage.id for stage in plan.stages for after in stage.after)


def test_subgraphs_are_inlined_with_prefixed_ids_and_bound_values(tmp_path):
    write(
        tmp_path / "child.yaml",
        """\
metadata: {name: child}
spec:
  inputs: {topic: {}, depth: {type: integer, default: 2}}
  models: {m: {id: smollm2-135m}}
  outputs: {summary: "${nodes.write.outputs.text}"}
  nodes: [{name: write, type: llm, model: m, prompt: "About ${inputs.topic}, ${inputs.depth} deep"}]
""",
    )
    write(
        tmp_path / "twin.yaml",
        """\
metadata: {name: child}
spec:
  outputs: {done: "${nodes.work.outputs.stdout}"}
  nodes: [{name: work, type: tool, tool: shell}]
""",
    )
    parent = write(
        tmp_path / "parent.yaml",
        """\
metadata: {name: parent}
spec:
  inputs: {q: {}}
  models: {m: {id: smollm2-135m}}
  outputs: {report: "${nodes.use.outputs.text}"}
  nodes:
    - {name: first, type: llm, model: m, prompt: "${inputs.q}"}
    - {name: research, type: subgraph, ref: child.yaml, inputs: {topic: "${inputs.q}"}}
    - {name: other, type: subgraph, ref: twin.yaml, dependsOn: [first]}
    - name: use
      type: llm
      model: m
      prompt: "${nodes.research.outputs.summary} ${nodes.other.outputs.done}"
""",
    )
    graph = hetagent.load(parent)
    module = lower(graph, "ops")
    ids = {op.attr("id") for op in module.walk() if isinstance(op, HetOp)}
    assert {"research/write.prefill", "other/work.exec", "research.input.depth.parse"} <= ids
    plan = compile_plan(graph, split_placement(module))
    assert set(plan.documents) == {"", "research", "other"}
    assert plan.documents["other"]["spec"]["nodes"][0]["name"] == "work"
    assert plan.values["nodes.research.outputs.summary"] == "research/output:summary.template"
    steps = {step.id: step for step in _all_steps(plan.steps)}
    # the twin's tool waits for `first` (its dependsOn) though it reads nothing
    (waits_for,) = steps["other/work.exec"].inputs
    moves = {t.id: t.value for t in plan.transfers}
    assert moves.get(waits_for, waits_for) == plan.values["nodes.first.outputs.text"]
    # the child's llm (on gpu) reads the parent's input through a template on cpu: moved
    assert any(
        t.target == "gpu" and t.id.startswith("research/write.tokenize") for t in plan.transfers
    )
