"""`hetagent trace generate` and `hetagent simulate`.

The lead mounts them: `app.add_typer(sim_cli.app, name="trace")` and
`app.command("simulate")(sim_cli.simulate)`.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(help="Agent program traces for the simulator.", no_args_is_help=True)


@app.callback()
def trace() -> None:
    """Agent program traces (JSONL) for `hetagent simulate`."""


def _fail(message: str) -> None:
    print(message, file=sys.stderr)
    raise typer.Exit(2)


@app.command()
def generate(
    kind: str | None = typer.Option(None, help="swe, claude-code, bfcl or deep-research"),
    agent: Path | None = typer.Option(None, help="or: an AgentGraph YAML, its own programs"),
    programs: int = typer.Option(100, help="number of programs"),
    rate: float | None = typer.Option(None, help="programs per second (open loop)"),
    concurrency: int | None = typer.Option(None, help="programs in flight (closed loop)"),
    arrival: str = typer.Option("poisson", help="poisson or bursty (with --rate)"),
    seed: int = typer.Option(0, help="random seed"),
    tail_scale: float = typer.Option(1.0, help="multiply the heavy-tailed tool durations"),
    model: str | None = typer.Option(None, help="catalog model id every program uses"),
    output: Path = typer.Option(..., "-o", "--output", help="JSONL file to write"),
) -> None:
    """Write a trace of PROGRAMS agent programs of KIND (or of AGENT) to OUTPUT."""
    from hetagent.backends.sim import traces
    from hetagent.backends.sim.agent_traces import from_agent
    from hetagent.documents import load_file
    from hetagent.spec import AgentGraph

    if (kind is None) == (agent is None):
        _fail("give --kind KIND or --agent AGENT")
    try:
        if agent is not None:
            graph = load_file(agent)
            if not isinstance(graph, AgentGraph):
                _fail(f"--agent: {agent} is a {graph.kind}, not an AgentGraph")
            generated = from_agent(graph, programs, rate=rate, seed=seed)  # type: ignore[arg-type]
        else:
            generated = traces.generate(
                kind,  # type: ignore[arg-type]
                programs,
                rate=rate,
                concurrency=concurrency,
                arrival=arrival,
                seed=seed,
                tail_scale=tail_scale,
                model=model,
            )
        traces.dump(generated, output)
    except traces.TraceError as exc:
        _fail(str(exc))
    except ValueError as exc:  # a document error names the file and path
        _fail(str(exc).splitlines()[0])
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror}")
    stats = traces.summary(generated)
    print(
        f"wrote {output}: {stats['programs']} programs, {stats['turns_mean']:.1f} turns each, "
        f"tool p50 {stats['tool_p50_s']:.2f} s / p99 {stats['tool_p99_s']:.1f} s"
    )


def simulate(
    cluster: Path = typer.Option(..., help="Cluster YAML"),
    trace_file: Path = typer.Option(..., "--trace", help="trace JSONL (hetagent trace generate)"),
    agent: Path | None = typer.Option(None, help="AgentGraph YAML: run its plan"),
    model: str | None = typer.Option(None, help="catalog model id (with --pool)"),
    pool: str | None = typer.Option(None, help="pool serving --model"),
    replicas: int | None = typer.Option(None, help="replicas of --model (default: fill pool)"),
    policy: str = typer.Option("kv=evict,sched=fcfs", help="kv=NAME,sched=NAME[,kv.OPT=V]"),
    seeds: int = typer.Option(1, help="runs with seeds seed..seed+N-1 (generated traces)"),
    sla: float | None = typer.Option(None, help="SLA on job completion time, seconds"),
    sla_slowdown: float = typer.Option(3.0, help="else: SLA as a multiple of unloaded JCT"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Simulate a trace on a cluster under a plan and policies: JCT, SLA, utilization, TCO."""
    from hetagent.backends.sim import traces
    from hetagent.backends.sim.config import agent_on_cluster, model_on_pool, parse_policy
    from hetagent.backends.sim.engine import SimEngineError
    from hetagent.backends.sim.simulator import Simulation, SimulationError
    from hetagent.documents import load_file
    from hetagent.spec import AgentGraph, Cluster

    if (agent is None) == (model is None or pool is None):
        _fail("give --agent AGENT, or --model MODEL with --pool POOL")
    if seeds < 1:
        _fail(f"--seeds must be at least 1, got {seeds}")
    try:
        cluster_doc = load_file(cluster)
        if not isinstance(cluster_doc, Cluster):
            _fail(f"--cluster: {cluster} is a {cluster_doc.kind}, not a Cluster")
        spec = parse_policy(policy)
        if agent is not None:
            graph = load_file(agent)
            if not isinstance(graph, AgentGraph):
                _fail(f"--agent: {agent} is a {graph.kind}, not an AgentGraph")
            config = agent_on_cluster(graph, cluster_doc, spec)  # type: ignore[arg-type]
        else:
            config = model_on_pool(
                cluster_doc,  # type: ignore[arg-type]
                model,  # type: ignore[arg-type]
                pool,  # type: ignore[arg-type]
                spec,
                replicas=replicas,
            )
        base = traces.load(trace_file)
        runs: list[dict[str, Any]] = []
        for i in range(seeds):
            t = base if i == 0 else traces.regenerate(base, base.header.get("seed", 0) + i)
            metrics = Simulation(t, config).run()
            runs.append(metrics.summary(sla, None if sla else sla_slowdown))
    except (SimulationError, SimEngineError, traces.TraceError) as exc:
        _fail(str(exc))
    except ValueError as exc:  # DocumentError and other document problems name the file
        _fail(str(exc).splitlines()[0])
    result = _aggregate(runs)
    result["policy"] = spec.label
    if as_json:
        print(json.dumps(result, indent=2))
        return
    _table(result)


MEANED = (
    "jct_mean_s", "jct_p50_s", "jct_p95_s", "jct_p99_s", "makespan_s",
    "throughput_programs_per_s", "sla_attainment", "kv_hit_rate", "pinned_idle_gb_s",
    "pinned_contended_gb_s", "tco_usd", "tco_usd_per_program", "reprefill_tokens", "preemptions",
    "failed",
)  # fmt: skip


def _aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds (and each seed's figures under `runs`)."""
    out: dict[str, Any] = {k: statistics.fmean(r[k] for r in runs) for k in MEANED}
    pools = sorted({p for r in runs for p in r["utilization"]})
    out["utilization"] = {
        p: statistics.fmean(r["utilization"].get(p, 0.0) for r in runs) for p in pools
    }
    out["sla"] = runs[0]["sla"]
    out["errors"] = sorted({e for r in runs for e in r["errors"]})[:20]
    out["seeds"] = len(runs)
    out["programs"] = runs[0]["programs"]
    out["runs"] = runs
    return out


def _table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"simulation ({result['policy']}, {result['seeds']} seed(s))")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("programs (failed)", f"{result['programs']} ({result['failed']})"),
        ("JCT mean / p50", f"{result['jct_mean_s']:.2f} s / {result['jct_p50_s']:.2f} s"),
        ("JCT p95 / p99", f"{result['jct_p95_s']:.2f} s / {result['jct_p99_s']:.2f} s"),
        ("makespan", f"{result['makespan_s']:.1f} s"),
        ("throughput", f"{result['throughput_programs_per_s']:.4f} programs/s"),
        ("SLA attainment", f"{100 * result['sla_attainment']:.1f}% ({result['sla']})"),
        ("KV hit rate", f"{100 * result['kv_hit_rate']:.1f}%"),
        ("pinned-idle memory x time", f"{result['pinned_idle_gb_s']:.1f} GB*s"),
        ("  of which others waited", f"{result['pinned_contended_gb_s']:.1f} GB*s"),
        ("TCO", f"${result['tco_usd']:.2f} (${result['tco_usd_per_program']:.4f}/program)"),
    ]
    rows += [(f"utilization {p}", f"{100 * u:.1f}%") for p, u in result["utilization"].items()]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
