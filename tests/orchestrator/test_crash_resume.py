"""A process killed with SIGKILL mid-run: a new one resumes every run, and no finished step
runs twice."""

import subprocess
import sys
import time
from pathlib import Path

from hetagent.orchestrator.store import RunStore

WORKER = Path(__file__).with_name("crash_worker.py")
LOCAL = Path(__file__).parents[2] / "examples/clusters/local.yaml"
AGENT = """\
apiVersion: hetagent.dev/v1alpha1
kind: AgentGraph
metadata: {name: three-steps}
spec:
  models:
    tiny: {id: smollm2-135m, weights: {format: gguf}}
  nodes:
    - {name: first, type: tool, tool: shell, args: {command: first}}
    - {name: hold, type: tool, tool: shell, args: {command: hold}, dependsOn: [first]}
    - name: summary
      type: llm
      model: tiny
      messages: [{role: user, content: "${nodes.hold.outputs.text}"}]
      maxTokens: 8
  outputs:
    summary: ${nodes.summary.outputs.text}
"""
RUNS = 3


def worker(mode: str, tmp: Path) -> subprocess.Popen:
    args = [tmp / "agent.yaml", f"sqlite:///{tmp / 'runs.db'}", tmp / "effects", tmp / "gate"]
    return subprocess.Popen(
        [sys.executable, WORKER, mode, *map(str, args), str(RUNS), str(LOCAL)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_runs_killed_mid_step_resume_and_finish_with_each_step_run_exactly_once(tmp_path):
    (tmp_path / "agent.yaml").write_text(AGENT)
    first = worker("start", tmp_path)
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    deadline = time.monotonic() + 120  # a bound on waiting, not a timing assertion
    try:
        while True:  # until every run is inside its held step
            held = [
                run
                for run in store.list_runs()
                if any(s.key == "hold.exec" and s.status == "running" for s in store.steps(run.id))
            ]
            if len(held) == RUNS:
                break
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the runs never reached their held step"
            time.sleep(0.05)
    finally:
        first.kill()  # SIGKILL: no cleanup, no goodbye
        first.wait()
    assert {run.status for run in store.list_runs()} == {"running"}

    (tmp_path / "gate").touch()
    second = worker("resume", tmp_path)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err

    runs = store.list_runs()
    assert len(out.split()) == RUNS and {run.status for run in runs} == {"succeeded"}
    assert {run.outputs["summary"] for run in runs} == {"summary"}
    effects = (tmp_path / "effects").read_text().splitlines()
    expected = sorted(f"{run.id} {step}" for run in runs for step in ("first", "hold"))
    assert sorted(effects) == expected  # `first` ran before the kill and never again
