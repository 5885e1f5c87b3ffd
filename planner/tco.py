"""What an hour of a device costs: rented at its $/h, or owned (capital amortized with the capital
recovery factor, plus power), and what follows per request and per million tokens.

    owned $/h = purchase · CRF(r, N) / 8760 + TDP · utilization · PUE · $/kWh / 1000
    CRF(r, N) = r(1+r)^N / ((1+r)^N - 1)        (4 years at 8%: 0.302)
"""

from __future__ import annotations

from dataclasses import dataclass

from hetagent.planner.catalog import Device
from hetagent.spec import ClusterSpec, Pool

HOURS_PER_YEAR = 8760


class PricingError(ValueError):
    """A pool's cost cannot be worked out (it says which figure to set)."""


def capital_recovery_factor(rate: float, years: float) -> float:
    """The yearly payment that repays 1 over `years` at `rate` (1/years when the rate is 0)."""
    if rate == 0:
        return 1 / years
    growth = (1 + rate) ** years
    return rate * growth / (growth - 1)


@dataclass(frozen=True)
class HourlyCost:
    """$ per device-hour of a pool, split into what it is made of."""

    capital: float
    energy: float
    rent: float

    @property
    def total(self) -> float:
        return self.capital + self.energy + self.rent

    @property
    def per_second(self) -> float:
        return self.total / 3600


def device_hour_cost(pool: Pool, device: Device, cluster: ClusterSpec) -> HourlyCost:
    """A pool's $ per device-hour: its own `pricePerHour`, else rented at the catalog's $/h, else
    owned (the pool's or the catalog's purchase price amortized, plus power)."""
    if pool.price_per_hour is not None:
        return HourlyCost(capital=0.0, energy=0.0, rent=pool.price_per_hour)
    if pool.ownership == "rented":
        if device.rent_usd_per_hour is None:
            raise PricingError(
                f"pool {pool.name}: no rental price for {device.id}; set pricePerHour"
            )
        return HourlyCost(capital=0.0, energy=0.0, rent=device.rent_usd_per_hour)
    purchase = pool.purchase_price if pool.purchase_price is not None else device.purchase_usd
    if purchase is None:
        raise PricingError(
            f"pool {pool.name}: no purchase price for {device.id}; set purchasePrice"
        )
    amortization, energy = cluster.amortization, cluster.energy
    capital = purchase * capital_recovery_factor(amortization.rate, amortization.years)
    power_kw = (device.tdp_w or 0.0) / 1000 * energy.utilization * energy.pue
    return HourlyCost(
        capital=capital / HOURS_PER_YEAR, energy=power_kw * energy.price_per_kwh, rent=0.0
    )
