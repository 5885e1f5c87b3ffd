"""Fit the cost model's efficiencies (eta_compute, eta_memory, overhead per device and phase) to
measured latencies and throughputs.

A measurement row names a configuration (device, model, dtype, tensor-parallel devices, batch,
input and output lengths) and one metric; `predict_metric` is the one place that says how each
metric follows from the cost model's two phases:

    ttft_s                prefill of the batch
    tpot_s                one decode step at the mean context (input_len + output_len / 2)
    decode_tokens_per_s   batch · output_len / (prefill + output_len · step)   (incl. prefill)
    prefill_tokens_per_s  batch · input_len / prefill
    e2e_s                 prefill + output_len · step

`fit` minimizes, per device, the squared log error of the predictions over the efficiencies of
the phases that enough rows depend on, starting from (and weakly pulled towards) the priors, so
a figure the rows say nothing about stays at its prior. Rows without a batch (max-load runs
whose running batch was not published) cannot be predicted and are skipped.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from importlib.resources import files
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from hetagent.planner.catalog import (
    EFFICIENCY_COLUMNS,
    Catalog,
    Efficiency,
    load_catalog,
    read_efficiencies,
)
from hetagent.planner.costmodel import CostModel, CostModelError
from hetagent.planner.workload import BYTES_PER_VALUE, mean_context

PHASES = ("prefill", "decode")
SPLITS = ("calibration", "evaluation")
UNITS = {
    "ttft_s": "s",
    "tpot_s": "s",
    "e2e_s": "s",
    "decode_tokens_per_s": "tokens/s",
    "prefill_tokens_per_s": "tokens/s",
}
NEEDS_OUTPUT_LEN = ("tpot_s", "decode_tokens_per_s", "e2e_s")

ETA_BOUNDS = (0.05, 1.0)
MAX_OVERHEAD_S = 0.05
MIN_ROWS = 2  # rows a phase of a device needs before its figures are fitted
MIN_SHARE = 0.1  # a row depends on a phase if the phase is this much of its predicted time
# The pull towards the prior, as residuals next to the rows' log errors: moving an eta by a
# factor e costs as much as one row off by a factor e**PRIOR_WEIGHT (10%), as does moving the
# overhead by OVERHEAD_SCALE_S. Rows that pin a figure down outweigh it; the rest stay put.
PRIOR_WEIGHT = 0.1
OVERHEAD_SCALE_S = 0.005


@dataclass(frozen=True)
class Measurement:
    """One published or measured figure of one configuration (a row of a measurements file)."""

    device: str
    model: str
    dtype: str
    devices: int
    batch: int | None  # None: a max-load run whose running batch was not published
    input_len: int
    output_len: int | None  # None only for prefill metrics
    metric: str
    value: float
    unit: str
    split: str
    source: str
    notes: str
    where: str = ""  # file:line, for messages

    @property
    def mean_context(self) -> int:
        return mean_context(self.input_len, self.output_len or 0)


MEASUREMENT_COLUMNS = tuple(f.name for f in fields(Measurement) if f.name != "where")


def _integer(text: str, *, optional: bool = False) -> int | None:
    if text == "" and optional:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise ValueError(f"expected a whole number >= 1, got {text!r}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"expected a finite number > 0, got {text!r}")
    return value


def _one_of(choices: Iterable[str]):
    choices = tuple(choices)

    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return parse


def read_measurements(path: str | Path, catalog: Catalog | None = None) -> list[Measurement]:
    """Every row of a measurements CSV (columns as MEASUREMENT_COLUMNS, in any order). Files are
    edited by hand, so every problem raises ValueError naming the file, line and column."""
    catalog = catalog or load_catalog()
    parsers = {
        "device": _one_of(catalog.devices),
        "model": _one_of(catalog.models),
        "dtype": _one_of(BYTES_PER_VALUE),
        "devices": _integer,
        "batch": lambda text: _integer(text, optional=True),
        "input_len": _integer,
        "output_len": lambda text: _integer(text, optional=True),
        "metric": _one_of(UNITS),
        "value": _positive,
        "unit": str,
        "split": _one_of(SPLITS),
        "source": str,
        "notes": str,
    }
    rows = []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in MEASUREMENT_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}:1: missing columns {', '.join(missing)}")
        for record in reader:
            where = f"{path}:{reader.line_num}"
            if None in record or None in record.values():
                raise ValueError(f"{where}: expected {len(reader.fieldnames or ())} cells")
            values = {}
            for column, parse in parsers.items():
                try:
                    values[column] = parse(record[column].strip())
                except ValueError as error:
                    raise ValueError(f"{where}: column {column!r}: {error}") from None
            metric = values["metric"]
            if values["unit"] != UNITS[metric]:
                raise ValueError(
                    f"{where}: column 'unit': {metric} is in {UNITS[metric]!r}, "
                    f"not {values['unit']!r}"
                )
            if values["output_len"] is None and metric in NEEDS_OUTPUT_LEN:
                raise ValueError(f"{where}: column 'output_len': {metric} needs an output length")
            if not values["source"]:
                raise ValueError(f"{where}: column 'source': must not be empty")
            rows.append(Measurement(**values, where=where))
    return rows


# -- the mapping from metrics to the cost model -------------------------------------------------


def _phases(cost_model: CostModel, row: Measurement) -> tuple[float, float]:
    """Seconds of the batch's prefill and of one decode step at the mean context."""
    if row.batch is None:
        raise ValueError(f"{row.where}: no batch (a max-load run): cannot be predicted")
    model, device = cost_model.model(row.model), cost_model.device(row.device)
    shape = {"batch": row.batch, "devices": row.devices, "dtype": row.dtype}
    prefill = cost_model.prefill(model, device, row.input_len, **shape).seconds
    if row.metric in ("ttft_s", "prefill_tokens_per_s"):
        return prefill, 0.0
    step = cost_model.decode_step(model, device, row.mean_context, **shape).seconds
    return prefill, step


def _metric(row: Measurement, prefill: float, step: float) -> float:
    batch, output = row.batch or 1, row.output_len or 0
    if row.metric == "ttft_s":
        return prefill
    if row.metric == "tpot_s":
        return step
    if row.metric == "decode_tokens_per_s":
        return batch * output / (prefill + output * step)
    if row.metric == "prefill_tokens_per_s":
        return batch * row.input_len / prefill
    assert row.metric == "e2e_s", row.metric
    return prefill + output * step


def predict_metric(cost_model: CostModel, row: Measurement) -> float:
    """The cost model's figure for the row's metric (in the row's unit)."""
    return _metric(row, *_phases(cost_model, row))


def phase_shares(cost_model: CostModel, row: Measurement) -> dict[str, float]:
    """How much of the row's predicted time each phase takes (a tpot row: all decode)."""
    prefill, step = _phases(cost_model, row)
    if row.metric == "tpot_s":
        return {"prefill": 0.0, "decode": 1.0}
    decode = (row.output_len or 0) * step if step else 0.0
    total = prefill + decode
    return {"prefill": prefill / total, "decode": decode / total}


def relative_error(cost_model: CostModel, row: Measurement) -> float:
    return abs(predict_metric(cost_model, row) - row.value) / row.value


def mape(cost_model: CostModel, rows: Iterable[Measurement]) -> float:
    """Mean absolute percentage error of the predictions (nan without rows)."""
    errors = [relative_error(cost_model, row) for row in rows]
    return 100 * float(np.mean(errors)) if errors else math.nan


# -- the fit --------------------------------------------------------------------------------------


def packaged_efficiencies() -> dict[tuple[str, str], Efficiency]:
    """The priors shipped with the catalog, without any calibration file."""
    return read_efficiencies(files("hetagent.planner.catalog") / "efficiency.csv")


def predictable(rows: Iterable[Measurement]) -> tuple[list[Measurement], list[Measurement]]:
    """The rows with a batch, and those without (max-load runs), which cannot be predicted."""
    rows = list(rows)
    return [r for r in rows if r.batch is not None], [r for r in rows if r.batch is None]


def fit(
    rows: Iterable[Measurement],
    *,
    cost_model: CostModel | None = None,
    origin: str = "measurements",
    min_rows: int = MIN_ROWS,
) -> dict[tuple[str, str], Efficiency]:
    """Efficiencies of every device in `rows`, both phases: fitted where at least `min_rows` rows
    depend on the phase, else the prior (its source says so). Priors come from `cost_model`
    (default: the packaged priors, so refitting the same rows gives the same figures)."""
    base = cost_model or CostModel(efficiencies=packaged_efficiencies())
    by_device: dict[str, list[Measurement]] = {}
    for row in rows:  # devices with only max-load rows too: they keep their priors, saying why
        by_device.setdefault(row.device, [])
        if row.batch is not None:
            by_device[row.device].append(row)
    fitted = {}
    for device_id, device_rows in by_device.items():
        fitted |= _fit_device(base, device_id, device_rows, origin, min_rows)
    return fitted


def _fit_device(
    base: CostModel, device_id: str, rows: list[Measurement], origin: str, min_rows: int
) -> dict[tuple[str, str], Efficiency]:
    device = base.device(device_id)
    priors = {phase: base.efficiency(device, phase) for phase in PHASES}
    depending = {phase: 0 for phase in PHASES}
    for row in rows:
        try:
            shares = phase_shares(base, row)
        except CostModelError as error:  # e.g. fp8 on a device without an fp8 peak
            raise ValueError(f"{row.where}: {error}") from None
        for phase in PHASES:
            depending[phase] += shares[phase] >= MIN_SHARE
    free = [phase for phase in PHASES if depending[phase] >= min_rows]

    def table(x: np.ndarray) -> dict[tuple[str, str], Efficiency]:
        own = dict(base.efficiencies)
        for i, phase in enumerate(free):
            eta_c, eta_m, overhead_ms = x[3 * i : 3 * i + 3]
            own[(device_id, phase)] = Efficiency(eta_c, eta_m, overhead_ms / 1000, "candidate")
        return own

    measured = np.log([row.value for row in rows])
    start = np.array(
        [
            value
            for phase in free
            for value in (
                np.clip(priors[phase].eta_compute, *ETA_BOUNDS),
                np.clip(priors[phase].eta_memory, *ETA_BOUNDS),
                min(priors[phase].overhead_s, MAX_OVERHEAD_S) * 1000,  # in ms: all near 1
            )
        ]
    )

    def residuals(x: np.ndarray) -> np.ndarray:
        model = CostModel(base.catalog, table(x))
        predicted = np.log([predict_metric(model, row) for row in rows])
        pulls = []
        for i, phase in enumerate(free):
            eta_c, eta_m, overhead_ms = x[3 * i : 3 * i + 3]
            prior = priors[phase]
            pulls += [
                math.log(eta_c / prior.eta_compute),
                math.log(eta_m / prior.eta_memory),
                (overhead_ms / 1000 - prior.overhead_s) / OVERHEAD_SCALE_S,
            ]
        return np.concatenate([predicted - measured, PRIOR_WEIGHT * np.array(pulls)])

    solution = start
    if free:
        lower = [ETA_BOUNDS[0], ETA_BOUNDS[0], 0.0] * len(free)
        upper = [ETA_BOUNDS[1], ETA_BOUNDS[1], MAX_OVERHEAD_S * 1000] * len(free)
        solution = least_squares(residuals, start, bounds=(lower, upper)).x
    result = {}
    for phase in PHASES:
        rows_text = f"{_rows(depending[phase])} of {origin}"
        if phase in free:
            eta_c, eta_m, overhead_ms = (float(v) for v in solution[3 * free.index(phase) :][:3])
            result[(device_id, phase)] = Efficiency(
                round(eta_c, 4),
                round(eta_m, 4),
                round(overhead_ms / 1000, 6),
                f"fitted by hetagent costmodel calibrate on {rows_text}",
            )
        else:
            prior = priors[phase]
            result[(device_id, phase)] = Efficiency(
                prior.eta_compute,
                prior.eta_memory,
                prior.overhead_s,
                f"prior kept by hetagent costmodel calibrate: the phase is {MIN_SHARE:.0%} or "
                f"more of the time of {rows_text}, fewer than {min_rows}; prior: {prior.source}",
            )
    return result


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def write_efficiencies(
    path: str | Path, fitted: Mapping[tuple[str, str], Efficiency], note: str = ""
) -> None:
    """Write a calibration file in the packaged file's columns (HETAGENT_EFFICIENCY reads it);
    `note` (e.g. the date) is added to every row's source."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(EFFICIENCY_COLUMNS)
        for (device, phase), value in fitted.items():
            source = f"{value.source} ({note})" if note else value.source
            writer.writerow(
                [
                    device,
                    phase,
                    f"{value.eta_compute:g}",
                    f"{value.eta_memory:g}",
                    f"{value.overhead_s:g}",
                    source,
                ]
            )
