"""`hetagent trace generate` and `hetagent simulate` as a user runs them."""

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hetagent.backends.sim import cli

EXAMPLES = Path(__file__).parents[2] / "examples"
CLUSTER = EXAMPLES / "clusters" / "h100-only.yaml"


@pytest.fixture
def run():
    root = typer.Typer()
    root.add_typer(cli.app, name="trace")
    root.command("simulate")(cli.simulate)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(root, list(args))

    return invoke


@pytest.fixture
def trace_file(run, tmp_path):
    path = tmp_path / "swe.jsonl"
    result = run("trace", "generate", "--kind", "swe", "--programs", "8", "--rate", "0.5",
                 "--seed", "1", "--model", "llama-3.1-8b", "-o", str(path))  # fmt: skip
    assert result.exit_code == 0, result.output
    return path


def test_simulate_reports_the_metrics_as_json(run, trace_file):
    result = run("simulate", "--cluster", str(CLUSTER), "--model", "llama-3.1-8b",
                 "--pool", "h100", "--replicas", "1", "--trace", str(trace_file),
                 "--policy", "kv=fixed-ttl,sched=program-fcfs,kv.seconds=3", "--seeds", "2",
                 "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["seeds"] == 2 and len(out["runs"]) == 2
    assert out["runs"][0]["completed"] == 8
    assert out["jct_p50_s"] <= out["jct_p95_s"] <= out["jct_p99_s"]
    assert 0 <= out["sla_attainment"] <= 1 and 0 < out["utilization"]["h100"] <= 1
    assert out["tco_usd"] > 0 and out["policy"] == "kv=fixed-ttl(seconds=3),sched=program-fcfs"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "kv=nope"], "unknown kv_retention policy 'nope'"),
        (["--policy", "kv"], "expected KEY=VALUE"),
        (["--pool", "a100"], "no pool 'a100'"),
        (["--replicas", "99"], "holds at most 16 replicas"),
        (["--model", "gpt-9"], "unknown model 'gpt-9'"),
    ],
)
def test_bad_input_exits_2_with_one_line(run, trace_file, args, message):
    base = {"--cluster": str(CLUSTER), "--model": "llama-3.1-8b", "--pool": "h100",
            "--trace": str(trace_file)}  # fmt: skip
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    flat = [x for kv in base.items() for x in kv]
    result = run("simulate", *flat)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_missing_trace_file_is_a_clear_error(run, tmp_path):
    result = run("simulate", "--cluster", str(CLUSTER), "--model", "llama-3.1-8b",
                 "--pool", "h100", "--trace", str(tmp_path / "none.jsonl"))  # fmt: skip
    assert result.exit_code == 2 and "cannot read trace" in result.output


def test_generate_rejects_rate_and_concurrency_together(run, tmp_path):
    result = run("trace", "generate", "--kind", "bfcl", "--rate", "1", "--concurrency", "4",
                 "-o", str(tmp_path / "x.jsonl"))  # fmt: skip
    assert result.exit_code == 2 and "exactly one of --rate and --concurrency" in result.output


def test_agent_trace_simulates_on_its_plan(run, tmp_path):
    trace = tmp_path / "rag.jsonl"
    agent = str(EXAMPLES / "agents" / "rag-qa.yaml")
    result = run("trace", "generate", "--agent", agent, "--programs", "20", "--seed", "2",
                 "-o", str(trace))  # fmt: skip
    assert result.exit_code == 0, result.output
    result = run("simulate", "--cluster", str(EXAMPLES / "clusters" / "mixed-generations.yaml"),
                 "--agent", agent, "--trace", str(trace), "--sla", "3", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["runs"][0]["completed"] == 20
    assert out["sla"] == {"seconds": 3.0}
    assert out["tco_usd"] > 0
