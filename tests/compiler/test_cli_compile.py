"""`hetagent compile` as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
HETAGENT = str(Path(sys.executable).parent / "hetagent")
CODING = str(ROOT / "examples/agents/coding-agent.yaml")
CLUSTER = str(ROOT / "examples/clusters/mixed-generations.yaml")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HETAGENT, "compile", *args], capture_output=True, text=True, check=False)


def test_emit_ops_shows_prefill_and_decode_inside_the_loop_region():
    result = run(CODING, "--emit", "ops")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    loop_start = text.index('"scf.while"')
    loop_end = text.index('}) {agent.id = "fix"')
    assert loop_start < text.index('"llm.prefill"', loop_start) < loop_end
    assert loop_start < text.index('"llm.decode"', loop_start) < loop_end


def test_emit_plan_writes_json_for_a_cluster(tmp_path):
    out = tmp_path / "plan.json"
    result = run(CODING, "--emit", "plan", "--cluster", CLUSTER, "-o", str(out))
    assert result.returncode == 0, result.stderr
    plan = json.loads(out.read_text())
    assert plan["agent"] == "coding-agent"
    assert {pool["name"] for pool in plan["pools"]} == {
        "b200",
        "h100",
        "a100",
        "gaudi3",
        "xeon",
        "l4-cloud",
    }
    (loop,) = [step for step in plan["steps"] if step["kind"] == "loop"]
    pools = {step["kind"]: step["pool"] for step in loop["turn"] + loop["act"]}
    # the planner's placement: the model on accelerators, tool calls on the CPU pool
    assert pools["llm.prefill"] in {"b200", "h100", "a100", "gaudi3", "l4-cloud"}
    assert pools["llm.decode"] in {"b200", "h100", "a100", "gaudi3", "l4-cloud"}
    assert pools["tool.exec"] == "xeon"
    assert pools["llm.tokenize"] == pools["llm.prefill"]
    assert pools["llm.detokenize"] == pools["llm.decode"]
    assert plan["values"]["nodes.fix.outputs.turns"] == "fix#1"
    assert plan["outputs"]["turns"] == "fix#1"
    assert all(after < stage["id"] for stage in plan["stages"] for after in stage["after"])


def test_placing_without_a_cluster_is_a_user_error():
    result = run(CODING, "--emit", "placed")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "--emit placed places operators on pools: give --cluster CLUSTER.yaml"
    )


def test_unknown_emit_level_and_wrong_kinds_are_user_errors():
    result = run(CODING, "--emit", "llvm")
    assert (result.returncode, result.stderr.strip()) == (
        2,
        "unknown --emit 'llvm'; use one of agent, ops, placed, plan",
    )
    result = run(CLUSTER)
    assert result.returncode == 2
    assert result.stderr.strip() == f"{CLUSTER}: expected kind AgentGraph, got Cluster"
    assert "Traceback" not in result.stderr
