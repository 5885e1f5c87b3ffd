"""The SDK client and `hetagent submit` against a live `hetagent serve` (real local backend,
shell-tool agents), and `Client("local")` running in this process."""

import asyncio
import json
import subprocess
import sys

import pytest

from hetagent.client import Client, ClientError, RunFailed

AGENT = """\
apiVersion: hetagent.dev/v1alpha1
kind: AgentGraph
metadata: {name: greet}
spec:
  inputs:
    who: {type: string, default: world}
    payload: {type: string, default: "{}"}
  nodes:
    - {name: say, type: tool, tool: shell, args: {command: "echo hello ${inputs.who}"}}
    - name: check  # fails the run when the payload is not JSON
      type: transform
      parse: {input: "${inputs.payload}", format: json}
      dependsOn: [say]
  outputs:
    text: ${nodes.say.outputs.text}
"""


@pytest.fixture
def agent_file(tmp_path):
    path = tmp_path / "greet.yaml"
    path.write_text(AGENT)
    return path


def test_async_client_follows_a_run_live_and_gets_its_result(serve, agent_file):
    server = serve().start()

    async def go():
        async with Client(server.url, token=server.TOKEN) as client:
            run_id = await client.submit(str(agent_file), {"who": "sdk"})
            types = [event["type"] async for event in client.events(run_id)]
            run = await client.result(run_id)
            return types, run

    types, run = asyncio.run(go())
    assert types[0] == "run.created" and types[-1] == "run.succeeded"
    assert types.count("step.succeeded") == 1  # the tool call (a parse is not a step)
    assert run["outputs"] == {"text": "hello sdk"}


def test_client_errors_carry_the_servers_one_line_detail(serve, agent_file):
    server = serve().start()
    with Client(server.url, token=server.TOKEN) as client:
        with pytest.raises(ClientError) as missing:
            client.get_sync("no-such-run")
        assert missing.value.status == 404 and missing.value.detail == "no run 'no-such-run'"
        with pytest.raises(ClientError) as bad_input:
            client.submit_sync(str(agent_file), {"colour": "red"})
        assert bad_input.value.status == 422 and "unknown input 'colour'" in bad_input.value.detail
        failing = client.submit_sync("greet", {"payload": "oops"})  # stored by the call before
        with pytest.raises(RunFailed) as failed:
            client.result_sync(failing)
        assert failed.value.run["status"] == "failed"
    with Client(server.url, token="wrong") as stranger:
        with pytest.raises(ClientError) as refused:
            stranger.get_sync(failing)
        assert refused.value.status == 401


def test_local_client_runs_agents_in_process(tmp_path, agent_file):
    with Client("local", db=f"sqlite:///{tmp_path / 'local.db'}") as client:
        run_id = client.submit_sync(agent_file, {"who": "local"})
        events = list(client.events_sync(run_id))
        assert events[-1]["type"] == "run.succeeded"
        assert client.result_sync(run_id)["outputs"] == {"text": "hello local"}
        with pytest.raises(ClientError) as missing:
            client.get_sync("nothing")
        assert missing.value.status == 404


def cli(*args, env=None):
    command = [sys.executable, "-m", "hetagent.orchestrator.serve_cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_submit_command_waits_and_prints_the_outputs(serve, agent_file):
    server = serve().start()
    common = ["--server", server.url, "--token", server.TOKEN]
    done = cli("submit", str(agent_file), "--input", "who=cli", "--wait", *common)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"text": "hello cli"}
    assert "succeeded say.exec" in " ".join(done.stderr.split())
    started = cli("submit", "greet", *common)
    assert started.returncode == 0 and len(started.stdout.strip()) == 32  # the run id
    failed = cli("submit", "greet", "--input", "payload=oops", "--wait", *common)
    assert failed.returncode == 1 and "failed" in failed.stderr


def test_cli_user_errors_are_one_line_with_status_2(serve, agent_file, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from hetagent.orchestrator.serve_cli import app

    monkeypatch.setenv("HETAGENT_TOKEN_FILE", str(tmp_path / "token"))
    server = serve().start()
    common = ["--server", server.url, "--token", server.TOKEN]
    for args, message in [
        (["submit", "greet", "--input", "novalue", *common], "give NAME=VALUE"),
        (["submit", "unknown-agent", *common], "no agent 'unknown-agent'"),
        (["submit", "greet", "--server", "ftp://x"], "give http(s)://HOST:PORT"),
        (["submit", str(tmp_path / "missing.yaml"), *common], "cannot read the agent"),
        (["serve", "--cluster", str(tmp_path / "none.yaml")], "cannot read"),
        (["serve", "--cluster", str(agent_file)], "expected a Cluster"),
        (["serve", "--backend", "mainframe"], "unknown backend 'mainframe'; use local or ray"),
        (["serve", "--address", "auto"], "--address is for --backend ray"),
        (["serve", "--tokens", str(agent_file)], "expected `tokens:"),
        (["serve", "--db", "nosuch://x"], "cannot use the run database URL"),
    ]:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_server_without_tokens_makes_one_that_the_client_finds(
    serve, agent_file, tmp_path, monkeypatch
):
    token = tmp_path / "made-token"
    monkeypatch.setenv("HETAGENT_TOKEN_FILE", str(token))  # the server inherits it
    server = serve(tokens=False).start()
    assert token.stat().st_mode & 0o077 == 0  # readable by its owner only
    with Client(server.url) as client:  # no token given: the file's
        run_id = client.submit_sync(agent_file)
        assert client.result_sync(run_id)["outputs"] == {"text": "hello world"}
    with Client(server.url, token="guess") as stranger:
        with pytest.raises(ClientError) as refused:
            stranger.get_sync(run_id)
        assert refused.value.status == 401
