"""How fast the compiler lowers large agent graphs.

Synthetic AgentGraphs of N steps (LLM calls, tool calls, retrievals, templates and ReAct loops,
each reading one or two earlier steps, so the graph fans out and joins) go through
frontend -> lower-agent-to-ops -> assign-affinity -> materialize-transfers -> cluster-by-device
-> emit, in memory and without re-verifying between passes (as the runtime compiles; the CLI
and the tests verify after every pass). Prints seconds per stage (median of --runs) and writes
benchmarks/results/compiler_scale.json. Target (issue 3): 10,000 steps in under 2 s here.

    python benchmarks/compiler_scale.py [--nodes 1000 10000] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from hetagent.compiler import paused_gc
from hetagent.compiler.dialects import make_context
from hetagent.compiler.emit import emit_plan
from hetagent.compiler.frontend import build_module
from hetagent.compiler.passes import (
    AssignAffinity,
    ClusterByDevice,
    LowerAgentToOps,
    MaterializeTransfers,
)
from hetagent.compiler.placement import Placement, Pool, placed_ops
from hetagent.spec import AgentGraph, parse_document

RESULTS = Path(__file__).parent / "results" / "compiler_scale.json"
POOLS = (Pool("gpu", "h100", 8), Pool("npu", "gaudi3", 8), Pool("cpu", "xeon-8480", 8))


def synthetic_graph(steps: int, seed: int = 0) -> AgentGraph:
    """A random DAG of `steps` steps; each reads one or two of the previous 50."""
    rng = random.Random(seed)
    nodes = []
    for i in range(steps):
        reads = sorted({rng.randrange(max(0, i - 50), i) for _ in range(2)}) if i else []
        context = " ".join(f"${{nodes.n{j}.outputs.text}}" for j in reads) or "${inputs.task}"
        kind = rng.choices(["llm", "tool", "retrieve", "transform", "agent"], [4, 2, 1, 2, 1])[0]
        node = {"name": f"n{i}", "type": kind}
        if kind == "llm":
            node |= {"model": "chat", "prompt": f"Step {i}: {context}", "maxTokens": 128}
        elif kind == "tool":
            node |= {"tool": "shell", "args": {"command": f"echo {context}"}}
        elif kind == "retrieve":
            node |= {"index": "docs", "query": context}
        elif kind == "transform":
            node |= {"template": f"[{context}]"}
        else:
            node |= {
                "model": "chat",
                "instructions": "Solve it.",
                "prompt": context,
                "tools": ["shell", "python"],
                "maxTurns": 8,
            }
        nodes.append(node)
    document = {
        "apiVersion": "hetagent.dev/v1alpha1",
        "kind": "AgentGraph",
        "metadata": {"name": f"synthetic-{steps}"},
        "spec": {
            "inputs": {"task": {}},
            "models": {"chat": {"id": "llama-3.1-8b"}, "embed": {"id": "minilm-l6"}},
            "indexes": {"docs": {"documents": "docs/", "embeddingModel": "embed"}},
            "outputs": {"last": f"${{nodes.n{steps - 1}.outputs.text}}"},
            "nodes": nodes,
        },
    }
    return parse_document(document)


def split_placement(module) -> Placement:
    """Prefill on the GPUs, decode on the NPUs, everything else on the CPUs: many transfers."""
    assignment = {}
    for op in placed_ops(module):
        name = op.name
        pool = "gpu" if name in ("llm.prefill", "llm.tokenize", "retr.embed") else "cpu"
        assignment[op.attr("id")] = "npu" if name in ("llm.decode", "llm.detokenize") else pool
    return Placement(POOLS, assignment)


def run_once(graph: AgentGraph) -> tuple[dict[str, float], int]:
    """Seconds per stage, and how many operators the plan has."""
    with paused_gc():  # as hetagent.compiler.lower and compile_plan run
        return _stages(graph)


def _stages(graph: AgentGraph) -> tuple[dict[str, float], int]:
    ctx = make_context()
    times: dict[str, float] = {}

    def timed(stage: str, work):
        start = time.perf_counter()
        result = work()
        times[stage] = time.perf_counter() - start
        return result

    module = timed("frontend", lambda: build_module(graph))
    timed("lower-agent-to-ops", lambda: LowerAgentToOps().apply(ctx, module))
    placement = split_placement(module)
    timed("assign-affinity", lambda: AssignAffinity(placement).apply(ctx, module))
    timed("materialize-transfers", lambda: MaterializeTransfers().apply(ctx, module))
    timed("cluster-by-device", lambda: ClusterByDevice().apply(ctx, module))
    timed("emit", lambda: emit_plan(module, graph))
    return times, sum(1 for _ in module.walk())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    results = []
    for steps in args.nodes:
        graph = synthetic_graph(steps)
        measured = [run_once(graph) for _ in range(args.runs)]
        runs, operators = [times for times, _ in measured], measured[0][1]
        stages = {stage: statistics.median(r[stage] for r in runs) for stage in runs[0]}
        total = statistics.median(sum(r.values()) for r in runs)
        results.append(
            {
                "nodes": steps,
                "total_seconds": round(total, 3),
                "stages": {k: round(v, 3) for k, v in stages.items()},
                "runs": args.runs,
            }
        )
        if not args.json:
            detail = "  ".join(f"{k} {v:.3f}" for k, v in stages.items())
            print(
                f"{steps:>6} steps ({operators} operators): {total:.3f} s total "
                f"(median of {args.runs})  {detail}"
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
