"""Schemathesis (pinned) against the live service's OpenAPI spec: whatever it sends, with or
without a token, in any order its links allow, the service answers as its spec says and never
with a 5xx.

Run through schemathesis's own CLI: its pytest plugin does not load under pytest 9."""

import os
import subprocess
import sys
from pathlib import Path

from hetagent.client import Client

ECHO = """\
apiVersion: hetagent.dev/v1alpha1
kind: AgentGraph
metadata: {name: echo}
spec:
  nodes:
    - {name: say, type: tool, tool: shell, args: {command: "echo hello"}}
  outputs:
    text: ${nodes.say.outputs.text}
"""


def test_api_answers_per_its_spec_and_never_with_a_server_error(tmp_path, serve):
    server = serve().start()
    (tmp_path / "echo.yaml").write_text(ECHO)
    with Client(server.url, token=server.TOKEN) as client:  # the spec's example run uses it
        client.put_agent_sync(str(tmp_path / "echo.yaml"))
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "run", f"{server.url}/openapi.json",
        "--header", f"Authorization: Bearer {server.TOKEN}",
        "--exclude-path", "/v1/events",  # a live feed that never ends; test_api.py covers it
        "--checks", "all",
        # the spec can only describe the envelope of an agent document; catalog ids,
        # references and whether the agent can be planned are checked past it (422 with paths)
        # DELETE /v1/runs/{id} cancels: the run stays readable (status cancelled), by design
        "--exclude-checks", "positive_data_acceptance,use_after_free",
        "--max-examples", "20",
        "--no-color",
    ]  # fmt: skip
    if os.environ.get("CI"):
        command += ["--seed", "1"]  # CI reproduces the same requests every time
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
