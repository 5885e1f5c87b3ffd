"""The quickstart agent end to end through the service: `hetagent serve` with the real local
backend (SmolLM2-135M on the CPU, MiniLM retrieval, the sandboxed Python tool), submitted
through the SDK, followed live, finished with an answer."""

from pathlib import Path

import httpx
import pytest

from hetagent.backends.local.engine import models
from hetagent.client import Client

ROOT = Path(__file__).parents[2]
MODEL = "smollm2-135m"


def test_quickstart_submitted_through_the_sdk_runs_to_an_answer(serve):
    if not models.cached_path(MODEL).is_file():
        pytest.skip(f"{MODEL} is not in the model cache; `hetagent models pull {MODEL}`")
    server = serve(
        base_dir=ROOT / "examples/agents", cluster=ROOT / "examples/clusters/local.yaml"
    ).start()
    with Client(server.url, token=server.TOKEN) as client:
        run_id = client.submit_sync(str(ROOT / "examples/agents/quickstart.yaml"))
        kinds = {event["type"] for event in client.events_sync(run_id)}
        run = client.result_sync(run_id)
    assert {"run.created", "step.running", "step.succeeded", "run.succeeded"} <= kinds
    assert run["outputs"]["answer"].strip() and run["outputs"]["turns"] >= 1
    assert run["tokens"]["input"] > 0 and run["tokens"]["output"] > 0
    assert {step["pool"] for step in run["steps"]} == {"cpu"}
    assert any(step["key"].startswith("lookup") for step in run["steps"])
    headers = {"Authorization": f"Bearer {server.TOKEN}"}
    cluster = httpx.get(f"{server.url}/v1/cluster", headers=headers).json()
    engines = cluster["pools"][0]["engines"]  # the cluster view reads the engine it loaded
    assert engines and 0 <= engines[0]["kv_cache_usage"] <= 1 and engines[0]["kv_blocks"] > 0
