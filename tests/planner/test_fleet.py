"""Fleet sizing (Mélange-style ILP) on cases small enough to work out by hand."""

import pytest

from hetagent.compiler.placement import Pool
from hetagent.planner.fleet import TARGET_UTILIZATION, Candidate, Server, size_fleet
from hetagent.planner.tco import HourlyCost
from hetagent.spec import Traffic

CHEAP, FAST = Server("cheap", "m", 1), Server("fast", "m", 1)
# a request keeps a cheap device busy 1 s, or a fast device 0.5 s
ON_CHEAP = Candidate("on cheap", {CHEAP: 1.0}, usd_per_request=1 / 3600)
ON_FAST = Candidate("on fast", {FAST: 0.5}, usd_per_request=1.5 / 3600)
HOURLY = {"cheap": HourlyCost(1.0, 0.0, 0.0), "fast": HourlyCost(3.0, 0.0, 0.0)}


def sized(rate: float, cheap_devices: int = 2):
    pools = [Pool("cheap", "l4", cheap_devices), Pool("fast", "h100", 10)]
    traffic = Traffic(arrivalRatePerSecond=rate)
    return size_fleet([ON_CHEAP, ON_FAST], HOURLY, pools, traffic)


def test_light_traffic_goes_to_the_cheapest_placement():
    fleet = sized(rate=1.0)  # 1 busy device / 0.7 target -> 2 cheap devices, $2/h
    assert fleet.shares == {"on cheap": pytest.approx(1.0)}
    assert fleet.usd_per_hour == pytest.approx(2.0)


def test_traffic_beyond_the_cheap_pool_spills_over_at_the_lowest_cost():
    # 2 req/s. A cheap device serves 0.7 req/s at the target utilization, a fast one 1.4, so
    # the fleet needs 0.7 n_cheap + 1.4 n_fast >= 2 at the least n_cheap + 3 n_fast: all-cheap
    # needs 3 devices (2 exist), all-fast 2 ($6/h); one of each ($4/h) serves it. Requests that
    # cost less go to the cheap device up to its capacity: 0.7 / 2 = 35% of them.
    fleet = sized(rate=2.0)
    assert fleet.fits
    assert fleet.usd_per_hour == pytest.approx(4.0)
    assert fleet.shares["on cheap"] == pytest.approx(TARGET_UTILIZATION / 2)
    assert fleet.shares["on fast"] == pytest.approx(1 - TARGET_UTILIZATION / 2)
    cheap = next(p for p in fleet.pools if p.pool == "cheap")
    assert cheap.utilization == pytest.approx(TARGET_UTILIZATION)


def test_a_cluster_too_small_asks_for_the_fewest_extra_devices_and_is_flagged():
    # 20 req/s with no cheap device: the 10 fast ones serve 14 req/s; the other 6 need 5 more
    # fast devices ($15/h) or 4 fast + 1 cheap (6.3 req/s, $13/h): both lack 5 devices.
    fleet = sized(rate=20.0, cheap_devices=0)
    needed = {p.pool: p.devices_needed for p in fleet.pools}
    assert needed == {"fast": 14, "cheap": 1}
    assert not fleet.fits and not any(p.fits for p in fleet.pools)


def test_bursty_traffic_gets_more_headroom():
    pools = [Pool("cheap", "l4", 100)]
    calm = size_fleet([ON_CHEAP], HOURLY, pools, Traffic(arrivalRatePerSecond=7.0))
    bursty = size_fleet(
        [ON_CHEAP], HOURLY, pools, Traffic(arrivalRatePerSecond=7.0, burstiness=2.0)
    )
    assert calm.pools[0].devices_needed == 10 and bursty.pools[0].devices_needed == 20


def test_servers_on_a_cpu_pool_share_its_devices():
    host, model = Server("cpu", "host", 1), Server("cpu", "smollm2-135m", 1)
    both = Candidate("local", {host: 0.1, model: 0.2}, usd_per_request=0.0)
    pools, hourly = [Pool("cpu", "host-cpu", 1)], {"cpu": HourlyCost(0.5, 0.0, 0.0)}
    shared = size_fleet([both], hourly, pools, Traffic(arrivalRatePerSecond=1.0), {"cpu"})
    (cpu,) = shared.pools
    assert cpu.devices_needed == 1 and cpu.fits  # 0.3 busy / 0.7: one socket for both
    apart = size_fleet([both], hourly, pools, Traffic(arrivalRatePerSecond=1.0))
    assert apart.pools[0].devices_needed == 2  # as accelerators: a device per model
