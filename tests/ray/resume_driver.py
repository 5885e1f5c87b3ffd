"""A driver of the Ray backend for the resume test: `start` submits a run and waits for it,
`resume` goes on with the unfinished runs of the store; both on the Ray cluster at ADDRESS.
Prints the ids of the runs it finished.

    python resume_driver.py start|resume AGENT DB ADDRESS CLUSTER
"""

import asyncio
import sys
from pathlib import Path

import hetagent
from hetagent.backends.ray.backend import RayBackend
from hetagent.compiler import compile_plan
from hetagent.orchestrator.runtime import Runtime
from hetagent.orchestrator.store import RunStore
from hetagent.planner.plan import plan_agent


async def main(mode: str, agent: Path, db: str, address: str, cluster: Path) -> None:
    runtime = Runtime(RayBackend(address=address), RunStore(db), owner=f"driver-{mode}")
    if mode == "start":
        graph = hetagent.load(agent)
        plan = compile_plan(graph, plan_agent(graph, hetagent.load(cluster)).placement)
        ids = [await runtime.submit(plan, {})]
    else:
        ids = await runtime.resume()
    results = [await runtime.wait(run_id) for run_id in ids]
    await runtime.close()
    for result in results:
        print(result.run_id, result.status, result.error or "", flush=True)


if __name__ == "__main__":
    mode, agent, db, address, cluster = sys.argv[1:6]
    asyncio.run(main(mode, Path(agent), db, address, Path(cluster)))
