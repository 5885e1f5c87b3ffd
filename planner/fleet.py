"""How many devices each pool needs for the agent's traffic, and what that fleet costs an hour.

A placed operator keeps its pool's devices busy for latency * devices it spans * the share it
pays (1/batch of a decode) device-seconds per request.
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

    @property
    def fits(self) -> bool:
        """The cluster has the devices the traffic needs."""
        return self.devices_needed <= self.devices_available


def size_fleet(
    usage: Iterable[tuple[str, float, int]],
    hourly: Mapping[str, HourlyCost],
    pools: Iterable[Pool],
    traffic: Traffic | None,
) -> list[PoolFleet]:
    """Devices per pool for the traffic (1 request/s when the agent declares none), from the
    (pool, device-seconds per request, tensor-parallel group) of every placed operator: a
    pool's count is rounded up to whole groups of the largest model it serves."""
    rate = traffic.arrival_rate_per_second if traffic else 1.0
    burstiness = traffic.burstiness if traffic else 1.0
    target = TARGET_UTILIZATION / max(1.0, burstiness)
    busy: dict[str, float] = {}
    group: dict[str, int] = {}
    for pool, device_seconds, devices in usage:
        busy[pool] = busy.get(pool, 0.0) + device_seconds
        group[pool] = max(group.get(pool, 1), devices)
    fleet = []
    for pool in pools:
        load = rate * busy.get(pool.name, 0.0)  # devices busy on average
        unit = group.get(pool.name, 1)
        needed = unit * math.ceil(load / target / unit) if load > 0 else 0
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
