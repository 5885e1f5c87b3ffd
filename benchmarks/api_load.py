"""Run submissions through the HTTP API under load, against submitting in process.

`hetagent serve` runs in a subprocess on loopback; N concurrent clients (httpx, keep-alive) each
POST /v1/runs of a small agent (two template steps: no model, no tool process, so the API and the
runtime's bookkeeping are what is measured) until the total is reached or the time bound passes.
The baseline, measured in the same run, is the same number of submissions through
`Service.submit` in one process with the same concurrency: no HTTP, no auth, no JSON.
The ratio (API / in-process submissions per second) is what HTTP costs. Errors are any non-202
answer or failed request (target 0); the runs submitted are then waited for, and counted.

Medians of several repeats. Bounded: at most --total submissions and --seconds per repeat.
Writes benchmarks/results/api_load.json.

    python benchmarks/api_load.py [--clients 8] [--total 300] [--repeats 3] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

import hetagent
from hetagent.backends.local.backend import LocalBackend
from hetagent.orchestrator.runtime import Runtime
from hetagent.orchestrator.server import Service
from hetagent.orchestrator.store import RunStore

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "api_load.json"
LOCAL = HERE.parent / "examples/clusters/local.yaml"
TOKEN = "bench-token"
AGENT = """\
apiVersion: hetagent.dev/v1alpha1
kind: AgentGraph
metadata: {name: bench}
spec:
  inputs:
    n: {type: integer, default: 0}
  nodes:
    - {name: greet, type: transform, template: "request ${inputs.n}"}
    - {name: shout, type: transform, template: "${nodes.greet.outputs.text}!"}
  outputs:
    text: ${nodes.shout.outputs.text}
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def load(submit, clients: int, total: int, seconds: float) -> dict:
    """`clients` workers share `total` submissions; each latency is one submit's."""
    latencies: list[float] = []
    errors: list[str] = []
    ids: list[str] = []
    counter = iter(range(total))
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        for n in counter:
            if time.perf_counter() > deadline:
                return
            started = time.perf_counter()
            try:
                ids.append(await submit(n))
            except Exception as error:  # counted, reported; the load goes on
                errors.append(f"{type(error).__name__}: {error}"[:200])
                continue
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - began
    return {
        "submitted": len(ids),
        "errors": len(errors),
        "error_samples": errors[:3],
        "per_second": len(ids) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1e3 if latencies else None,
        "p99_ms": percentile(latencies, 0.99) * 1e3 if latencies else None,
        "ids": ids,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    (tmp / "tokens.yaml").write_text(f"tokens: {{{TOKEN}: bench}}\n")
    command = [
        sys.executable, "-m", "hetagent.orchestrator.serve_cli", "serve", "--port", str(port),
        "--db", f"sqlite:///{tmp / 'api.db'}", "--tokens", str(tmp / "tokens.yaml"),
        "--cluster", str(LOCAL),
    ]  # fmt: skip
    server = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return server, url
        except httpx.TransportError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("the server did not start")


async def through_api(url: str, clients: int, total: int, seconds: float) -> dict:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as http:
        reply = await http.post(
            "/v1/agents", content=AGENT, headers={"Content-Type": "application/yaml"}
        )
        reply.raise_for_status()

        async def submit(n: int) -> str:
            response = await http.post("/v1/runs", json={"agent": "bench", "inputs": {"n": n}})
            if response.status_code != 202:
                raise RuntimeError(f"{response.status_code}: {response.text[:100]}")
            return response.json()["id"]

        result = await load(submit, clients, total, seconds)
        # every run submitted finishes (followed to its end over SSE)
        finished = 0
        for run_id in result["ids"]:
            async with http.stream("GET", f"/v1/runs/{run_id}/events", timeout=None) as events:
                async for line in events.aiter_lines():
                    finished += line.startswith("event: run.succeeded")
        result["succeeded"] = finished
        return result


async def in_process(tmp: Path, clients: int, total: int, seconds: float) -> dict:
    store = RunStore(f"sqlite:///{tmp / 'inproc.db'}")
    runtime = Runtime(LocalBackend(), store)
    service = Service(runtime, store, [hetagent.load(LOCAL)], tmp)
    service.put_agent("bench", hetagent.spec.load_yaml(AGENT))

    async def submit(n: int) -> str:
        return await service.submit("bench", "bench", {"n": n})

    result = await load(submit, clients, total, seconds)
    for run_id in result["ids"]:
        await runtime.wait(run_id)
    result["succeeded"] = sum(store.get_run(i).status == "succeeded" for i in result["ids"])
    await runtime.close()
    store.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--total", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    os.environ.setdefault("HETAGENT_WORKSPACES", tempfile.mkdtemp(prefix="bench-workspaces-"))
    api_runs, local_runs = [], []
    bounds = (args.clients, args.total, args.seconds)
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            server, url = start_server(Path(tmp))
            try:
                api_runs.append(asyncio.run(through_api(url, *bounds)))
            finally:
                server.terminate()
                server.wait(timeout=60)
            local_runs.append(asyncio.run(in_process(Path(tmp), *bounds)))
        a, b = api_runs[-1], local_runs[-1]
        print(
            f"repeat {repeat + 1}: API {a['per_second']:.0f}/s p50 {a['p50_ms']:.1f} ms "
            f"p99 {a['p99_ms']:.1f} ms errors {a['errors']}; in process {b['per_second']:.0f}/s"
        )

    def median(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs if r[key] is not None)

    api = {k: median(api_runs, k) for k in ("per_second", "p50_ms", "p99_ms")}
    local = {k: median(local_runs, k) for k in ("per_second", "p50_ms", "p99_ms")}
    result = {
        "benchmark": "api_load",
        "what": "POST /v1/runs of a two-template-step agent on loopback, N concurrent clients",
        "clients": args.clients,
        "submissions_per_repeat": args.total,
        "repeats": args.repeats,
        "api": {
            "submissions_per_second": api["per_second"],
            "p50_latency_ms": api["p50_ms"],
            "p99_latency_ms": api["p99_ms"],
            "errors": sum(r["errors"] for r in api_runs),
            "runs_submitted": sum(r["submitted"] for r in api_runs),
            "runs_succeeded": sum(r["succeeded"] for r in api_runs),
        },
        "baseline": {
            "name": "in-process Service.submit (no HTTP), same concurrency",
            "submissions_per_second": local["per_second"],
            "p50_latency_ms": local["p50_ms"],
            "p99_latency_ms": local["p99_ms"],
            "errors": sum(r["errors"] for r in local_runs),
        },
        "ratio_api_to_in_process_throughput": api["per_second"] / local["per_second"],
        "error_samples": [e for r in api_runs + local_runs for e in r["error_samples"]][:5],
        "machine": f"{os.cpu_count()} cores (shared)",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "error_samples"}, indent=2))


if __name__ == "__main__":
    main()
