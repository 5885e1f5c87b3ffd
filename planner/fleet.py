"""How many devices each pool needs for the agent's traffic, and what that fleet costs an hour.

Mélange's ILP (Griggs et al., 2024) picks GPU counts per type and splits request buckets across
them at the lowest hourly cost. Here the buckets are placements: every candidate placement meets
the SLA on its own (the planner's optimum, the baselines that meet it, the optimum with one
operator moved), so any split of the traffic across them keeps every request within the SLA.
A server is one replica of a model on a tensor-parallel group of a pool's devices (host
operators: one device of a CPU pool); candidate k asks `load[k][server]` device-seconds of it per
request.

    minimize    Σ_s price(pool(s)) · group(s) · n_s                 ($ per hour of the fleet)
    subject to  Σ_k x_k = 1                                         (all traffic is served)
                rate · Σ_k load[k][s] · x_k ≤ U · group(s) · n_s    (capacity, each server)
                Σ_{s on p} group(s) · n_s ≤ available(p)            (the cluster's devices)
                x_k ∈ [0, 1],  n_s whole numbers

U is the target utilization, lowered for bursty traffic. When the cluster is too small for the
traffic, the last constraint admits missing devices at a price far above any real one: the fleet
uses every device the cluster has before it asks for more, and each short pool is flagged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from hetagent.compiler.placement import Pool
from hetagent.planner.tco import HourlyCost
from hetagent.spec import Traffic

TARGET_UTILIZATION = 0.7  # headroom for queueing at Poisson arrivals
# Among fleets of equal hourly cost, prefer the split whose requests use less device time.
TIE_BREAK = 1e-6
SOLVE_SECONDS = 10.0
SHORTAGE_PRICE = 1000.0  # x the dearest device-hour: a missing device is the last resort


@dataclass(frozen=True)
class Server:
    """One replica of `model` ("host" for host operators) on `group` devices of `pool`."""

    pool: str
    model: str
    group: int


@dataclass(frozen=True)
class Candidate:
    """A placement requests may take, the device-seconds it asks of each server per request,
    and what a request costs on it."""

    name: str
    load: Mapping[Server, float]
    usd_per_request: float


@dataclass(frozen=True)
class PoolFleet:
    pool: str
    devices_needed: int
    devices_available: int
    utilization: float  # of the devices needed, at the arrival rate
    usd_per_hour: float  # the devices needed, for an hour
    replicas: Mapping[str, float]  # "model x group" -> replicas (fractions on shared pools)

    @property
    def fits(self) -> bool:
        """The cluster has the devices the traffic needs."""
        return self.devices_needed <= self.devices_available


@dataclass(frozen=True)
class Fleet:
    pools: list[PoolFleet]
    shares: Mapping[str, float]  # candidate name -> share of the requests it serves

    @property
    def usd_per_hour(self) -> float:
        return sum(p.usd_per_hour for p in self.pools)

    @property
    def fits(self) -> bool:
        return all(p.fits for p in self.pools)


def size_fleet(
    candidates: Sequence[Candidate],
    hourly: Mapping[str, HourlyCost],
    pools: Iterable[Pool],
    traffic: Traffic | None,
    shared: frozenset[str] = frozenset(),
) -> Fleet:
    """The cheapest fleet (and traffic split) for the traffic, 1 request/s when none is
    declared; the first candidate should be the planner's optimum. On the `shared` pools (CPU
    sockets) servers share devices: a pool needs whole devices, its servers fractions of them."""
    if not candidates:
        raise ValueError("fleet sizing needs at least one candidate placement")
    pools = list(pools)
    rate = traffic.arrival_rate_per_second if traffic else 1.0
    target = TARGET_UTILIZATION / max(1.0, traffic.burstiness if traffic else 1.0)
    servers = sorted(
        {s for c in candidates for s in c.load}, key=lambda s: (s.pool, s.model, s.group)
    )
    solved = _solve(candidates, servers, hourly, pools, rate, target, shared)
    if solved is None:
        raise RuntimeError("the fleet ILP found no solution (HiGHS); this is a bug")
    shares, replicas, devices_of = solved
    fleet = []
    for pool in pools:
        mine = [s for s in servers if s.pool == pool.name and replicas[s] > 1e-9]
        devices = devices_of[pool.name]
        busy = rate * sum(
            shares[c.name] * load for c in candidates for s, load in c.load.items() if s in mine
        )
        fleet.append(
            PoolFleet(
                pool=pool.name,
                devices_needed=devices,
                devices_available=pool.count,
                utilization=busy / devices if devices else 0.0,
                usd_per_hour=devices * hourly[pool.name].total,
                replicas={f"{s.model} x{s.group}": round(replicas[s], 3) for s in mine},
            )
        )
    return Fleet(fleet, {name: share for name, share in shares.items() if share > 1e-9})


def _solve(
    candidates: Sequence[Candidate],
    servers: list[Server],
    hourly: Mapping[str, HourlyCost],
    pools: list[Pool],
    rate: float,
    target: float,
    shared: frozenset[str],
) -> tuple[dict[str, float], dict[Server, float], dict[str, int]] | None:
    """Variables: x_k (the candidates' traffic shares), n_s (replicas of each server: whole
    ones, but on shared pools), short_p (devices pool p lacks, priced far above any device so
    they are a last resort), then d_p (whole devices of each shared pool)."""
    k, s, p = len(candidates), len(servers), len(pools)
    common = [pool.name for pool in pools if pool.name in shared]
    c = len(common)
    n = k + s + p + c
    hour = 3600 * rate
    shortage_price = SHORTAGE_PRICE * max(h.total for h in hourly.values())
    cost = np.array(
        [TIE_BREAK * cand.usd_per_request * hour for cand in candidates]
        + [0.0 if v.pool in shared else hourly[v.pool].total * v.group for v in servers]
        + [shortage_price] * p
        + [hourly[name].total for name in common]
    )
    rows, lower, upper = [], [], []

    def row(entries: dict[int, float], low: float, high: float) -> None:
        dense = [0.0] * n
        for column, value in entries.items():
            dense[column] += value
        rows.append(dense)
        lower.append(low)
        upper.append(high)

    row(dict.fromkeys(range(k), 1.0), 1.0, 1.0)  # all traffic is served
    for j, server in enumerate(servers):  # capacity of each server
        entries = {i: rate * cand.load.get(server, 0.0) for i, cand in enumerate(candidates)}
        row(entries | {k + j: -target * server.group}, -np.inf, 0.0)
    for i, pool in enumerate(pools):
        used = {k + j: float(v.group) for j, v in enumerate(servers) if v.pool == pool.name}
        if pool.name in shared:  # servers share the pool's whole devices
            d = k + s + p + common.index(pool.name)
            row(used | {d: -1.0}, -np.inf, 0.0)
            used = {d: 1.0}
        row(used | {k + s + i: -1.0}, -np.inf, pool.count)  # the cluster's devices, and lack
    integer = [0] * k + [0 if v.pool in shared else 1 for v in servers] + [1] * (p + c)
    result = milp(
        cost,
        constraints=LinearConstraint(np.array(rows), lower, upper),
        integrality=np.array(integer),
        bounds=Bounds([0.0] * n, [1.0] * k + [np.inf] * (s + p + c)),
        options={"time_limit": SOLVE_SECONDS},
    )
    if result.x is None:
        return None
    shares = {cand.name: float(result.x[i]) for i, cand in enumerate(candidates)}
    replicas: dict[Server, float] = {}
    for j, v in enumerate(servers):
        if v.pool in shared:  # the share of the pool's devices its load needs (n_s is free)
            load = rate * sum(shares[c.name] * c.load.get(v, 0.0) for c in candidates)
            replicas[v] = load / (target * v.group)
        else:
            replicas[v] = math.ceil(result.x[k + j] - 1e-6)
    devices = {}
    for pool in pools:
        if pool.name in shared:
            devices[pool.name] = math.ceil(result.x[k + s + p + common.index(pool.name)] - 1e-6)
        else:
            mine = [v for v in servers if v.pool == pool.name]
            devices[pool.name] = sum(v.group * replicas[v] for v in mine)
    return shares, replicas, devices
