"""`hetagent plan`: the planner on the example agents and clusters, as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import hetagent
from hetagent.planner.plan import PlanError, PlanOptions, plan_agent

ROOT = Path(__file__).parents[2]
HETAGENT = str(Path(sys.executable).parent / "hetagent")
CODING = ROOT / "examples/agents/coding-agent.yaml"
MIXED = ROOT / "examples/clusters/mixed-generations.yaml"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HETAGENT, *args], capture_output=True, text=True, check=False)


def test_plan_json_meets_the_sla_and_compares_with_baselines():
    result = run("plan", str(CODING), "--cluster", str(MIXED), "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["sla_met"] and plan["latency_seconds"] <= plan["sla_seconds"] == 900
    assert plan["tco_per_request_usd"] > 0
    kinds = {a["kind"] for a in plan["assignments"]}
    assert {"llm.prefill", "llm.decode", "tool.exec"} <= kinds
    for assignment in plan["assignments"]:
        assert set(assignment) >= {"op", "kind", "pool", "device", "latency_s", "cost_usd"}
    names = {b["name"] for b in plan["baselines"]}
    assert {"cheapest-per-op", "per-task-sla"} <= names
    for baseline in plan["baselines"]:
        if baseline["sla_met"]:  # the optimum is never beaten by a feasible baseline
            assert baseline["ratio"] >= 1 - 1e-9, baseline


def test_plan_table_shows_the_placement_and_the_ratios():
    result = run("plan", str(CODING), "--cluster", str(MIXED))
    assert result.returncode == 0, result.stderr
    assert "fix.turn.prefill" in result.stdout and "SLA 900 s: met" in result.stdout
    assert "baselines (ratio = baseline cost / ours)" in result.stdout


def test_an_unreachable_sla_names_the_best_latency_and_the_critical_path(tmp_path):
    document = CODING.read_text().replace("p95LatencySeconds: 900 ", "p95LatencySeconds: 1 ")
    tight = tmp_path / "tight.yaml"
    tight.write_text(document)
    assert "p95LatencySeconds: 1 " in document
    with pytest.raises(PlanError) as error:
        plan_agent(hetagent.load(tight), hetagent.load(MIXED))
    message = str(error.value)
    assert "best achievable" in message and "fix.turn.decode" in message
    result = run("plan", str(tight), "--cluster", str(MIXED))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_placement_that_splits_prefill_and_decode_pays_a_kv_transfer():
    plan = plan_agent(hetagent.load(CODING), hetagent.load(MIXED))
    pools = {a.op: a.pool for a in plan.assignments}
    calls = {op.rsplit(".", 1)[0] for op in pools if op.endswith(".prefill")}
    split = {
        c: (pools[f"{c}.prefill"], pools[f"{c}.decode"])
        for c in calls
        if pools[f"{c}.prefill"] != pools[f"{c}.decode"]
    }
    assert split, "the planner no longer splits any call of the coding agent: pick another case"
    compiled = run("compile", str(CODING), "--emit", "plan", "--cluster", str(MIXED))
    transfers = json.loads(compiled.stdout)["transfers"]
    for call, (prefill_pool, decode_pool) in split.items():
        assert any(
            t["kind"] == "kv"
            and t["id"].startswith(f"{call}.decode")
            and (t["source"], t["target"]) == (prefill_pool, decode_pool)
            for t in transfers
        ), call


def test_latency_objective_is_never_slower_than_tco():
    graph, cluster = hetagent.load(CODING), hetagent.load(MIXED)
    cheapest = plan_agent(graph, cluster)
    fastest = plan_agent(graph, cluster, PlanOptions(objective="latency"))
    assert fastest.solution.latency_s <= cheapest.solution.latency_s + 1e-9
    assert fastest.solution.cost_usd >= cheapest.solution.cost_usd - 1e-12


def test_fleet_grows_with_the_traffic_and_batching_shares_it():
    graph, cluster = hetagent.load(CODING), hetagent.load(MIXED)
    calm = plan_agent(graph, cluster).fleet
    busier = graph.model_copy(deep=True)
    busier.spec.traffic.arrival_rate_per_second *= 10
    busy = plan_agent(busier, cluster).fleet

    def load(fleet):  # devices busy on average
        return sum(p.utilization * p.devices_needed for p in fleet.pools)

    # more traffic fills decode batches, so load grows, but less than the traffic does
    assert load(calm) <= load(busy) <= 10 * load(calm) + 1e-9
    assert busy.usd_per_hour > calm.usd_per_hour
    assert calm.fits and busy.fits


def test_fleet_spills_traffic_to_other_placements_when_the_cheapest_pool_runs_short():
    graph, cluster = hetagent.load(CODING), hetagent.load(MIXED)
    busier = graph.model_copy(deep=True)
    busier.spec.traffic.arrival_rate_per_second = 0.5
    fleet = plan_agent(busier, cluster).fleet
    assert fleet.fits and all(p.devices_needed <= p.devices_available for p in fleet.pools)
    assert len(fleet.shares) > 1 and sum(fleet.shares.values()) == pytest.approx(1)


def test_bad_options_are_user_errors():
    result = run("plan", str(CODING), "--cluster", str(MIXED), "--solver", "magic")
    assert result.returncode == 2
    assert result.stderr.strip() == "unknown --solver 'magic'; use one of auto, milp, heuristic"


def test_energy_objective_uses_no_more_energy_than_tco():
    graph, cluster = hetagent.load(ROOT / "examples/agents/rag-qa.yaml"), hetagent.load(MIXED)
    cheapest = plan_agent(graph, cluster)
    frugal = plan_agent(graph, cluster, PlanOptions(objective="energy"))
    assert frugal.solution.sla_met
    assert frugal.energy_joules <= cheapest.energy_joules + 1e-9
    assert frugal.solution.cost_usd >= cheapest.solution.cost_usd - 1e-12


def test_plot_writes_a_png(tmp_path):
    image = tmp_path / "plan.png"
    result = run("plan", str(CODING), "--cluster", str(MIXED), "--plot", str(image), "--json")
    assert result.returncode == 0, result.stderr
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(result.stdout)["energy_joules_per_request"] > 0


def test_fleet_comes_in_whole_tensor_parallel_groups_and_flags_a_short_cluster():
    graph = hetagent.load(ROOT / "examples/agents/deep-research.yaml")
    h100s = hetagent.load(ROOT / "examples/clusters/h100-only.yaml")
    plan = plan_agent(graph, h100s)
    group = max(a.devices for a in plan.assignments if a.pool == "h100")
    assert group >= 2  # a 72B model in bf16 does not fit one 80 GB device
    (fleet,) = plan.fleet.pools
    groups = {server: int(server.rsplit(" x", 1)[1]) for server in fleet.replicas}
    assert max(groups.values()) == group and fleet.fits
    assert fleet.devices_needed == sum(groups[s] * n for s, n in fleet.replicas.items())
    busier = graph.model_copy(deep=True)
    busier.spec.traffic.arrival_rate_per_second *= 100
    (crowded,) = plan_agent(busier, h100s).fleet.pools
    assert crowded.devices_needed > crowded.devices_available and not crowded.fits


def test_a_kv_lease_spares_the_loops_turns_their_full_prefill():
    leased = hetagent.load(CODING)  # kvRetention: lease
    evicting = leased.model_copy(deep=True)
    evicting.spec.policies.kv_retention = "evict"
    cluster = hetagent.load(MIXED)
    with_lease = {a.op: a for a in plan_agent(leased, cluster).assignments}
    without = {a.op: a for a in plan_agent(evicting, cluster).assignments}
    assert (
        with_lease["fix.turn.prefill"].device_seconds < without["fix.turn.prefill"].device_seconds
    )
    # outside the loop nothing changes
    summary = "summary.prefill"
    if with_lease[summary].pool == without[summary].pool:
        assert with_lease[summary].latency_s == pytest.approx(without[summary].latency_s)
