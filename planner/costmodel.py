"""Roofline latency of LLM phases on a device, with calibrated efficiencies.

    t = max(F / (eta_c · peak · k), B / (eta_m · bw · k), X / link) + overhead

for k devices in tensor parallelism (X: the all-reduce bytes per device, two per layer, over
the scale-up link), with F and B from `workload`, peaks and bandwidths from the device catalog
and eta_c, eta_m, overhead fitted per device and phase (catalog/efficiency.csv; priors until
calibrated). One function per phase; the planner and the simulator both call these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

from hetagent.planner.catalog import (
    Catalog,
    Device,
    Efficiency,
    Model,
    load_catalog,
)
from hetagent.planner.catalog import efficiency as catalog_efficiency
from hetagent.planner.hostprobe import HOST_DEVICE, host_figures
from hetagent.planner.workload import (
    Work,
    decode_step_work,
    dtype_bytes,
    mean_context,
    memory_needed,
    prefill_work,
    step_work,
)

USABLE_MEMORY = 0.9  # of device memory, for weights and KV (vLLM's default utilization)
MAX_TENSOR_PARALLEL = 8  # one node's scale-up domain


class CostModelError(ValueError):
    """The catalog lacks a figure the model needs (it says which)."""


@dataclass(frozen=True)
class Timing:
    seconds: float
    bound: str  # what limits it: compute, memory, network


@dataclass(frozen=True)
class Prediction:
    prefill_s: float
    decode_step_s: float
    ttft_s: float
    output_tokens_per_s: float
    e2e_s: float
    bound: str  # of the decode step, which dominates long generations

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


class CostModel:
    """`efficiencies`, keyed like catalog/efficiency.csv by (device id or device kind, phase),
    come before the catalog's figures (packaged priors and calibration file): calibration
    evaluates the model with candidate efficiencies this way, without writing a file."""

    def __init__(
        self,
        catalog: Catalog | None = None,
        efficiencies: Mapping[tuple[str, str], Efficiency] | None = None,
    ):
        self.catalog = catalog or load_catalog()
        self.efficiencies = dict(efficiencies or {})

    def model(self, model_id: str) -> Model:
        try:
            return self.catalog.models[model_id]
        except KeyError:
            raise CostModelError(f"unknown model {model_id!r}") from None

    def device(self, device_id: str) -> Device:
        """A catalog device; `host-cpu` with the figures measured on this machine."""
        try:
            device = self.catalog.devices[device_id]
        except KeyError:
            raise CostModelError(f"unknown device {device_id!r}") from None
        if device.id == HOST_DEVICE and device.bf16_tflops is None:
            figures = host_figures()
            device = replace(
                device,
                cores=figures.cores,
                bf16_tflops=figures.flops / 1e12,
                memory_gb=figures.memory_bytes / 1e9,
                memory_bandwidth_gb_s=figures.memory_bandwidth / 1e9,
            )
        return device

    def efficiency(self, device: Device, phase: str) -> Efficiency:
        """This model's own figures for the device (by id, then kind), else the catalog's."""
        own = self.efficiencies
        found = own.get((device.id, phase)) or own.get((device.kind, phase))
        return found or catalog_efficiency(device, phase)

    # -- the roofline -----------------------------------------------------------------------

    def time(
        self,
        work: Work,
        device: Device,
        phase: str,
        *,
        dtype: str = "bf16",
        devices: int = 1,
        network_bytes: float = 0,
    ) -> Timing:
        """Roofline time of `work` split over `devices` devices of one kind, at the peak of the
        weights' precision (fp8 and int8 double bf16's on most accelerators)."""
        eta = self.efficiency(device, phase)
        compute = work.flops / (eta.eta_compute * _peak_flops(device, dtype) * devices)
        memory = work.bytes / (eta.eta_memory * _bandwidth(device) * devices)
        network = network_bytes / _link_bandwidth(device) if network_bytes else 0.0
        limit = max((compute, "compute"), (memory, "memory"), (network, "network"))
        return Timing(limit[0] + eta.overhead_s, limit[1])

    # -- the phases ---------------------------------------------------------------------------

    def prefill(
        self,
        model: Model,
        device: Device,
        tokens: int,
        *,
        batch: int = 1,
        prefix: int = 0,
        devices: int = 1,
        dtype: str = "bf16",
    ) -> Timing:
        work = prefill_work(model, tokens, batch=batch, prefix=prefix, dtype=dtype)
        network = _all_reduce_bytes(model, batch * tokens, devices)
        return self.time(
            work, device, "prefill", dtype=dtype, devices=devices, network_bytes=network
        )

    def decode_step(
        self,
        model: Model,
        device: Device,
        context: int,
        *,
        batch: int = 1,
        devices: int = 1,
        dtype: str = "bf16",
    ) -> Timing:
        work = decode_step_work(model, context, batch=batch, dtype=dtype)
        network = _all_reduce_bytes(model, batch, devices)
        return self.time(
            work, device, "decode", dtype=dtype, devices=devices, network_bytes=network
        )

    def step(
        self,
        model: Model,
        device: Device,
        prefill_tokens: int,
        *,
        prefix: int = 0,
        batch: int = 0,
        context: int = 0,
        devices: int = 1,
        dtype: str = "bf16",
    ) -> Timing:
        """An engine step mixing prefill chunks with `batch` decodes (`workload.step_work`), at
        the prefill phase's efficiency if it has a chunk (the chunk dominates it), else the
        decode phase's: what the simulator's engines charge per step."""
        work = step_work(
            model, prefill_tokens, prefix=prefix, batch=batch, context=context, dtype=dtype
        )
        network = _all_reduce_bytes(model, prefill_tokens + batch, devices)
        phase = "prefill" if prefill_tokens else "decode"
        return self.time(work, device, phase, dtype=dtype, devices=devices, network_bytes=network)

    def min_devices(
        self,
        model: Model,
        device: Device,
        *,
        batch: int,
        context: int,
        dtype: str = "bf16",
        limit: int = MAX_TENSOR_PARALLEL,
    ) -> int | None:
        """The fewest devices (a power of two, at most `limit`) whose memory holds the weights and
        the KV of `batch` sequences of `context`; None if none does. Devices of unknown memory
        (CPU sockets: host RAM) are taken to hold it."""
        if device.memory_gb is None:
            return 1
        needed = memory_needed(model, batch=batch, context=context, dtype=dtype)
        devices = 1
        while devices <= limit:
            if needed <= devices * device.memory_gb * 1e9 * USABLE_MEMORY:
                return devices
            devices *= 2
        return None

    def predict(
        self,
        model_id: str,
        device_id: str,
        *,
        devices: int = 1,
        dtype: str = "bf16",
        batch: int = 1,
        input_len: int,
        output_len: int,
    ) -> Prediction:
        """Latency and throughput of `batch` requests of `input_len` -> `output_len` tokens."""
        model, device = self.model(model_id), self.device(device_id)
        prefill = self.prefill(model, device, input_len, batch=batch, devices=devices, dtype=dtype)
        step = self.decode_step(
            model,
            device,
            mean_context(input_len, output_len),
            batch=batch,
            devices=devices,
            dtype=dtype,
        )
        e2e = prefill.seconds + output_len * step.seconds
        return Prediction(
            prefill_s=prefill.seconds,
            decode_step_s=step.seconds,
            ttft_s=prefill.seconds,
            output_tokens_per_s=batch / step.seconds,
            e2e_s=e2e,
            bound=step.bound,
        )


def _all_reduce_bytes(model: Model, tokens: int, devices: int) -> float:
    """Bytes each device sends for tensor parallelism: two ring all-reduces of the activations
    per layer, each moving 2·(k-1)/k of them."""
    if devices <= 1 or not (model.layers and model.hidden_size):
        return 0.0
    activations = tokens * model.hidden_size * dtype_bytes("bf16")
    return 2 * model.layers * 2 * (devices - 1) / devices * activations


def _peak_flops(device: Device, dtype: str) -> float:
    peak = {
        "bf16": device.bf16_tflops,
        "fp16": device.bf16_tflops,
        "fp8": device.fp8_tflops,
        "int8": device.int8_tops,
    }.get(dtype)
    if peak is None:
        raise CostModelError(f"the catalog has no {dtype} peak for {device.id}")
    return peak * 1e12


def _bandwidth(device: Device) -> float:
    if device.memory_bandwidth_gb_s is None:
        raise CostModelError(f"the catalog has no memory bandwidth for {device.id}")
    return device.memory_bandwidth_gb_s * 1e9


def _link_bandwidth(device: Device) -> float:
    """One direction of the scale-up link (the catalog lists bidirectional bandwidth)."""
    if device.scaleup_bandwidth_gb_s is None:
        raise CostModelError(f"the catalog has no scale-up bandwidth for {device.id}")
    return device.scaleup_bandwidth_gb_s / 2 * 1e9
