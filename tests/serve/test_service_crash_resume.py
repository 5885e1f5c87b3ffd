"""`hetagent serve` killed with SIGKILL while runs are mid-step: started again on the same store,
it resumes them, and each finishes with every step run exactly once. Real service, real local
backend: the agent's steps are shell tools, so no model is needed."""

import time

from hetagent.client import Client
from hetagent.orchestrator.runtime import workspace_root

RUNS = 3
AGENT = """\
apiVersion: hetagent.dev/v1alpha1
kind: AgentGraph
metadata: {name: gated}
spec:
  inputs:
    gate: {type: string}
  nodes:
    - name: first
      type: tool
      tool: shell
      args: {command: "echo first >> effects.log"}  # in the run's workspace
    - name: hold
      type: tool
      tool: shell
      # A tool process outlives a SIGKILLed server (the sandbox starts it in its own
      # session), and one may even start after the kill (the server died mid-spawn). Past the
      # gate (opened after the kill) a copy whose parent is no longer a server gives up, so
      # only the resumed step's copy acts; the sandbox does not do this for users yet.
      args:
        command: >-
          while [ ! -e ${inputs.gate} ]; do sleep 0.05; done;
          grep -q serve_cli /proc/$(cut -d' ' -f4 /proc/$$/stat)/cmdline || exit 3;
          echo hold >> effects.log; echo held
      dependsOn: [first]
      timeoutSeconds: 300
  outputs:
    text: ${nodes.hold.outputs.text}
"""


def test_service_killed_mid_run_resumes_every_run_after_restart(tmp_path, serve):
    (tmp_path / "gated.yaml").write_text(AGENT)
    gate = tmp_path / "gate"
    server = serve().start()
    with Client(server.url, token=server.TOKEN) as client:
        ids = [
            client.submit_sync(str(tmp_path / "gated.yaml"), {"gate": str(gate)})
            for _ in range(RUNS)
        ]
        deadline = time.monotonic() + 120  # a bound on waiting, not a timing assertion
        while True:  # until every run is inside its held step
            held = [
                run_id
                for run_id in ids
                if any(
                    s["key"] == "hold.exec" and s["status"] == "running"
                    for s in client.get_sync(run_id)["steps"]
                )
            ]
            if len(held) == RUNS:
                break
            assert time.monotonic() < deadline, "the runs never reached their held step"
            time.sleep(0.05)
    server.kill()

    gate.touch()
    server.start()
    with Client(server.url, token=server.TOKEN) as client:
        runs = [client.result_sync(run_id) for run_id in ids]
    assert {run["status"] for run in runs} == {"succeeded"}
    assert {run["outputs"]["text"] for run in runs} == {"held"}
    for run_id in ids:  # `first` ran before the kill and never again
        effects = (workspace_root() / run_id / "effects.log").read_text().splitlines()
        assert effects == ["first", "hold"]
