"""Device and model catalogs: data files with a source per number.

Each row of devices.csv and models.csv (next to this module) names its sources, so a number is
checked and corrected without touching code. An empty cell loads as None ("not known"), never 0.
"""

import csv
import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, ClassVar, TypeVar


@dataclass(frozen=True)
class Device:
    """An accelerator or CPU socket: dense (non-sparse) peaks in TFLOP/s or TOP/s, GB, GB/s
    (scale-up bidirectional), W, USD. Prices are dated: the *_basis columns say where and when."""

    KINDS: ClassVar[tuple[str, ...]] = ("gpu", "npu", "cpu")
    REQUIRED: ClassVar[tuple[str, ...]] = ("id", "name", "kind", "spec_source", "confidence")

    id: str
    name: str
    vendor: str
    kind: str
    cores: int | None  # CPU sockets: physical cores (from the model name), for tool-call costs
    bf16_tflops: float | None
    fp8_tflops: float | None
    int8_tops: float | None
    memory_gb: float | None
    memory_bandwidth_gb_s: float | None
    scaleup_link: str
    scaleup_bandwidth_gb_s: float | None
    tdp_w: float | None
    rent_usd_per_hour: float | None
    rent_basis: str
    purchase_usd: float | None
    purchase_basis: str
    spec_source: str
    confidence: str
    notes: str


@dataclass(frozen=True)
class Model:
    """What the cost model needs for FLOPs, weight bytes and KV bytes, named as in Hugging Face
    config.json. Parameters in billions; active < total only for mixture-of-experts models."""

    KINDS: ClassVar[tuple[str, ...]] = ("decoder", "encoder", "speech-to-text", "text-to-speech")
    REQUIRED: ClassVar[tuple[str, ...]] = ("id", "name", "kind", "params_b", "source")

    id: str
    name: str
    kind: str
    params_b: float | None
    active_params_b: float | None
    layers: int | None
    hidden_size: int | None
    heads: int | None
    kv_heads: int | None
    head_dim: int | None
    intermediate_size: int | None
    vocab_size: int | None
    experts: int | None
    experts_per_token: int | None
    max_context: int | None
    tied_embeddings: bool
    source: str


@dataclass(frozen=True)
class Catalog:
    """Both catalogs, keyed by id, in file order."""

    devices: dict[str, Device]
    models: dict[str, Model]


def _number(text: str, cast: type[float] | type[int]) -> float | int | None:
    value = cast(text) if text else None
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"expected a finite number >= 0, got {text!r}")
    return value


def _bool(text: str) -> bool:
    if text not in ("true", "false"):
        raise ValueError(f"expected true or false, got {text!r}")
    return text == "true"


_PARSERS: dict[Any, Callable[[str], Any]] = {
    str: str,
    float | None: lambda text: _number(text, float),
    int | None: lambda text: _number(text, int),
    bool: _bool,
}
Row = TypeVar("Row", Device, Model)


def read_rows(path: Traversable, row_type: type[Row]) -> dict[str, Row]:
    """Parse one catalog file into rows keyed by id. Catalogs are edited by hand, so every problem
    raises ValueError naming the file, line and column to fix."""
    columns = [f.name for f in fields(row_type)]
    rows: dict[str, Row] = {}
    with path.open("r", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != columns:
            raise ValueError(f"{path}:1: columns must be {','.join(columns)}")
        for record in reader:
            where = f"{path}:{reader.line_num}:"
            if None in record or None in record.values():
                raise ValueError(f"{where} expected {len(columns)} cells")
            values: dict[str, Any] = {}
            for field in fields(row_type):
                text = record[field.name].strip()
                if text == "" and field.name in row_type.REQUIRED:
                    raise ValueError(f"{where} column {field.name!r}: must not be empty")
                try:
                    values[field.name] = _PARSERS[field.type](text)
                except ValueError as error:
                    raise ValueError(f"{where} column {field.name!r}: {error}") from None
            kind, key = values["kind"], values["id"]
            if kind not in row_type.KINDS:
                raise ValueError(f"{where} column 'kind': {kind!r} is not one of {row_type.KINDS}")
            if key in rows:
                raise ValueError(f"{where} column 'id': duplicate id {key!r}")
            rows[key] = row_type(**values)
    return rows


@functools.cache
def load_catalog() -> Catalog:
    """Load the packaged catalogs once; importlib.resources finds them in any kind of install."""
    here = files(__package__)
    return Catalog(read_rows(here / "devices.csv", Device), read_rows(here / "models.csv", Model))


@dataclass(frozen=True)
class Efficiency:
    """The fractions of peak compute and memory bandwidth a device reaches in a phase, and a
    fixed overhead per engine step (scheduling, kernel launches), fitted by calibration."""

    eta_compute: float
    eta_memory: float
    overhead_s: float
    source: str


EFFICIENCY_COLUMNS = ("device", "phase", "eta_compute", "eta_memory", "overhead_s", "source")


def read_efficiencies(path: Traversable) -> dict[tuple[str, str], Efficiency]:
    """Rows keyed by (device id or device kind, phase); errors name file, line and column."""
    rows: dict[tuple[str, str], Efficiency] = {}
    with path.open("r", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != EFFICIENCY_COLUMNS:
            raise ValueError(f"{path}:1: columns must be {','.join(EFFICIENCY_COLUMNS)}")
        for record in reader:
            where = f"{path}:{reader.line_num}:"
            values = {}
            for column in ("eta_compute", "eta_memory", "overhead_s"):
                try:
                    values[column] = _number(record[column].strip(), float)
                except ValueError as error:
                    raise ValueError(f"{where} column {column!r}: {error}") from None
                if values[column] is None:
                    raise ValueError(f"{where} column {column!r}: must not be empty")
            for column in ("eta_compute", "eta_memory"):
                if not 0 < values[column] <= 1:
                    raise ValueError(f"{where} column {column!r}: must be in (0, 1]")
            rows[(record["device"].strip(), record["phase"].strip())] = Efficiency(
                **values, source=record["source"]
            )
    return rows


@functools.cache
def load_efficiencies() -> dict[tuple[str, str], Efficiency]:
    """The packaged priors, overridden by a calibration file (`hetagent costmodel calibrate`
    writes one; HETAGENT_EFFICIENCY names it, default ~/.config/hetagent/efficiency.csv)."""
    rows = read_efficiencies(files(__package__) / "efficiency.csv")
    override = Path(
        os.environ.get("HETAGENT_EFFICIENCY", Path.home() / ".config/hetagent/efficiency.csv")
    )
    if override.is_file():
        rows |= read_efficiencies(override)
    return rows


def efficiency(device: Device, phase: str) -> Efficiency:
    """The device's own fitted figures for the phase, else its kind's."""
    rows = load_efficiencies()
    found = rows.get((device.id, phase)) or rows.get((device.kind, phase))
    if found is None:
        raise ValueError(f"no efficiency for {device.id} ({device.kind}) in phase {phase!r}")
    return found
