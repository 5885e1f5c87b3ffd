"""How many devices each pool needs for the agent's traffic, and what that fleet costs an hour.

A placed operator keeps its pool's devices busy for (its cost per request) / (the pool's $ per
device-second) device-seconds per request: latency * devices it spans / the batch it shares.
At `spec.traffic.arrivalRatePerSecond` requests per second, a pool needs
    ceil(rate * sum of busy device-seconds of its operators / target utilization)
devices; bursty traffic (coefficient of variation above 1) lowers the utilization one can target.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hetagent.compiler.placement import Pool
from hetagent.planner.tco import HourlyCost
from hetagent.spec import Traffic

TARGET_UTILIZATION = 0.7  # headroom for queueing at Poisson arrivals


@dataclass(frozen=True)
class PoolFleet:
    pool: str
    devices_needed: int
    devices_available: int
    utilization: float  # of the devices needed, at the arrival rate
    usd_per_hour: float  # the devices needed, for an hour


def size_fleet(
    assignments: Iterable[tuple[str, float]],
    hourly: Mapping[str, HourlyCost],
    pools: Iterable[Pool],
    traffic: Traffic | None,
) -> list[PoolFleet]:
    """Devices per pool for the traffic (1 request/s when the agent declares none), from the
    (pool, cost per request) of every placed operator."""
    rate = traffic.arrival_rate_per_second if traffic else 1.0
    burstiness = traffic.burstiness if traffic else 1.0
    target = TARGET_UTILIZATION / max(1.0, burstiness)
    busy: dict[str, float] = {}
    for pool, cost in assignments:
        per_second = hourly[pool].per_second
        if per_second > 0:
            busy[pool] = busy.get(pool, 0.0) + cost / per_second
    fleet = []
    for pool in pools:
        load = rate * busy.get(pool.name, 0.0)  # devices busy on average
        needed = math.ceil(load / target) if load > 0 else 0
        fleet.append(
            PoolFleet(
                pool=pool.name,
                devices_needed=needed,
                devices_available=pool.count,
                utilization=load / needed if needed else 0.0,
                usd_per_hour=needed * hourly[pool.name].total,
            )
        )
    return fleet
