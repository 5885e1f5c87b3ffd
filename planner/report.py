"""An AgentPlan as a person reads it (rich tables) and as a program reads it (JSON)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from hetagent.planner.plan import AgentPlan


def plan_json(plan: AgentPlan) -> dict[str, Any]:
    solution = plan.solution
    return {
        "agent": plan.agent,
        "cluster": plan.cluster,
        "sla_seconds": plan.sla_seconds,
        "latency_seconds": solution.latency_s,
        "sla_met": solution.sla_met,
        "tco_per_request_usd": solution.cost_usd,
        "usd_per_million_tokens": plan.usd_per_million_tokens,
        "tco_per_request_at_fleet_usd": plan.usd_per_request_at_fleet,
        "energy_joules_per_request": plan.energy_joules,
        "critical_path": list(solution.critical_path),
        "assignments": [vars(a) for a in plan.assignments],
        "baselines": [vars(b) for b in plan.baselines],
        "fleet": [vars(f) | {"fits": f.fits} for f in plan.fleet.pools],
        "fleet_shares": dict(plan.fleet.shares),
        "pools": {
            name: {
                "usd_per_hour": cost.total,
                "capital": cost.capital,
                "energy": cost.energy,
                "rent": cost.rent,
            }
            for name, cost in plan.hourly.items()
        },
    }


def plan_tables(plan: AgentPlan) -> Group:
    solution = plan.solution
    operators = Table(title=f"{plan.agent} on {plan.cluster}", show_edge=False, pad_edge=False)
    for column in ("operator", "kind", "pool", "device", "latency s", "cost $/request"):
        operators.add_column(column, justify="right" if " " in column else "left")
    critical = set(solution.critical_path)
    for a in plan.assignments:
        name = f"{escape(a.op)} *" if a.op in critical else escape(a.op)
        operators.add_row(name, a.kind, a.pool, a.device, f"{a.latency_s:.4g}", f"{a.cost_usd:.3g}")
    if plan.sla_seconds is None:
        sla = "no SLA"
    else:
        sla = f"SLA {plan.sla_seconds:g} s: {'met' if solution.sla_met else 'MISSED'}"
    summary = Text(
        f"end-to-end latency {solution.latency_s:.3g} s ({sla}); "
        f"TCO ${solution.cost_usd:.4g} per request"
        + (
            f", ${plan.usd_per_million_tokens:.3g} per million output tokens"
            if plan.usd_per_million_tokens
            else ""
        )
        + f"; {plan.energy_joules:.4g} J per request; * marks the critical path"
    )
    comparison = Table(title="baselines (ratio = baseline cost / ours)", show_edge=False)
    for column in ("baseline", "$/request", "latency s", "SLA", "ratio"):
        comparison.add_column(column)
    for b in plan.baselines:
        if b.tco_per_request_usd is None:
            comparison.add_row(b.name, "-", "-", "-", escape(b.reason) or "not possible")
            continue
        comparison.add_row(
            b.name,
            f"{b.tco_per_request_usd:.4g}",
            f"{b.latency_s:.3g}",
            "met" if b.sla_met else "missed",
            f"{b.ratio:.2f}x" if b.ratio else "-",
        )
    fleet = Table(
        title=f"fleet for {plan.arrival_rate:g} requests/s: "
        f"${plan.usd_per_request_at_fleet:.4g} per request with idle time paid",
        show_edge=False,
    )
    for column in ("pool", "devices needed", "in cluster", "replicas", "utilization", "$/hour"):
        fleet.add_column(column)
    for f in plan.fleet.pools:
        if f.devices_needed:
            fleet.add_row(
                f.pool,
                str(f.devices_needed),
                str(f.devices_available) + ("" if f.fits else " (too few)"),
                escape(", ".join(f"{n} x ({server})" for server, n in f.replicas.items())),
                f"{f.utilization:.0%}",
                f"{f.usd_per_hour:,.2f}",
            )
    shares = ", ".join(f"{share:.0%} {name}" for name, share in plan.fleet.shares.items())
    split = Text(f"traffic split: {shares}") if len(plan.fleet.shares) > 1 else Text("")
    return Group(operators, summary, comparison, fleet, split)
