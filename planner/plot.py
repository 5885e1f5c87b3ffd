"""A plan drawn: where each operator runs (and for how long), and what the baselines cost."""

from __future__ import annotations

from pathlib import Path

from hetagent.planner.plan import AgentPlan


def plot_plan(plan: AgentPlan, path: Path) -> None:
    """Two panels in one PNG: operators by latency coloured by pool (critical path outlined),
    and TCO per request of the plan and each baseline (hatched: misses the SLA)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in CI
    import matplotlib.pyplot as plt

    pools = sorted({a.pool for a in plan.assignments})
    colour = {pool: plt.get_cmap("tab10")(i % 10) for i, pool in enumerate(pools)}
    critical = set(plan.solution.critical_path)
    figure, (placement, costs) = plt.subplots(
        1, 2, figsize=(13, max(3.5, 0.3 * len(plan.assignments) + 1.5))
    )
    names = [a.op for a in plan.assignments]
    placement.barh(
        names,
        [a.latency_s for a in plan.assignments],
        color=[colour[a.pool] for a in plan.assignments],
        edgecolor=["black" if a.op in critical else "none" for a in plan.assignments],
    )
    placement.invert_yaxis()
    placement.set_xscale("log")
    placement.set_xlabel("latency per request, s (outlined: critical path)")
    placement.set_title(f"{plan.agent} on {plan.cluster}")
    placement.legend(
        handles=[plt.Rectangle((0, 0), 1, 1, color=colour[p]) for p in pools],
        labels=pools,
        loc="lower right",
        fontsize="small",
    )
    rows = [("hetagent", plan.solution.cost_usd, plan.solution.sla_met)] + [
        (b.name, b.tco_per_request_usd, b.sla_met)
        for b in plan.baselines
        if b.tco_per_request_usd is not None
    ]
    bars = costs.bar(
        [r[0] for r in rows],
        [r[1] for r in rows],
        color=["tab:green"] + ["tab:gray"] * (len(rows) - 1),
    )
    for bar, (_, _, met) in zip(bars, rows, strict=True):
        if not met:
            bar.set_hatch("//")
    costs.set_ylabel("TCO per request, $ (hatched: misses the SLA)")
    sla = "no SLA" if plan.sla_seconds is None else f"SLA {plan.sla_seconds:g} s"
    costs.set_title(f"cost vs baselines ({sla})")
    costs.tick_params(axis="x", labelrotation=30)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
