"""How well the calibrated cost model predicts published measurements it was not fitted on.

Fits the efficiencies (`hetagent.planner.calibrate.fit`, from the packaged priors) on the
calibration split of benchmarks/data/published_measurements.csv, then predicts the evaluation
split with the fitted figures and, as the baseline, with the packaged priors. Both splits are
kept apart: no evaluation row is seen by the fit. Everything happens in memory; the user's
calibration file (HETAGENT_EFFICIENCY) is neither read nor written. Rows without a batch
(max-load runs) cannot be predicted and are counted as skipped. Prints the mean absolute
percentage error (MAPE) overall, per device and per metric, and writes
benchmarks/results/costmodel_accuracy.json. Target: MAPE <= 10% on the evaluation split.

    python benchmarks/costmodel_accuracy.py [--measurements FILE.csv] [--json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from hetagent.planner.calibrate import (
    Measurement,
    fit,
    mape,
    packaged_efficiencies,
    predict_metric,
    predictable,
    read_measurements,
)
from hetagent.planner.costmodel import CostModel

HERE = Path(__file__).parent
MEASUREMENTS = HERE / "data" / "published_measurements.csv"
RESULTS = HERE / "results" / "costmodel_accuracy.json"
TARGET_PCT = 10.0


def _grouped(
    rows: list[Measurement], key: Callable[[Measurement], str], prior: CostModel, fitted: CostModel
) -> dict[str, dict[str, float | int]]:
    groups: dict[str, list[Measurement]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return {
        name: {
            "rows": len(members),
            "mape_pct": round(mape(fitted, members), 1),
            "prior_mape_pct": round(mape(prior, members), 1),
        }
        for name, members in sorted(groups.items())
    }


def _shown(path: Path) -> str:
    """The path relative to the repository when it is inside it."""
    path, root = path.resolve(), HERE.parent.resolve()
    return str(path.relative_to(root) if path.is_relative_to(root) else path)


def evaluate(path: Path) -> dict:
    rows = read_measurements(path)
    calibration = [row for row in rows if row.split == "calibration"]
    evaluation = [row for row in rows if row.split == "evaluation"]
    usable_calibration, skipped_calibration = predictable(calibration)
    usable_evaluation, skipped_evaluation = predictable(evaluation)

    priors = packaged_efficiencies()  # not the user's calibration file
    prior = CostModel(efficiencies=priors)
    efficiencies = fit(calibration, cost_model=prior, origin=f"{_shown(path)} (calibration split)")
    fitted = CostModel(efficiencies=priors | efficiencies)

    per_device = _grouped(usable_evaluation, lambda r: r.device, prior, fitted)
    for device, entry in per_device.items():
        entry["calibration_rows"] = sum(r.device == device for r in usable_calibration)
        entry["fitted_phases"] = [
            phase
            for (name, phase), value in efficiencies.items()
            if name == device and value.source.startswith("fitted")
        ]
    return {
        "measurements": _shown(path),
        "target_pct": TARGET_PCT,
        "mape_pct": round(mape(fitted, usable_evaluation), 1),
        "prior_mape_pct": round(mape(prior, usable_evaluation), 1),
        "meets_target": mape(fitted, usable_evaluation) <= TARGET_PCT,
        "rows": {"calibration": len(usable_calibration), "evaluation": len(usable_evaluation)},
        "skipped_rows": {
            "calibration": len(skipped_calibration),
            "evaluation": len(skipped_evaluation),
            "reason": "no batch (max-load runs): the running batch was not published",
        },
        "calibration_fit": {
            "mape_pct": round(mape(fitted, usable_calibration), 1),
            "prior_mape_pct": round(mape(prior, usable_calibration), 1),
        },
        "per_device": per_device,
        "per_metric": _grouped(usable_evaluation, lambda r: r.metric, prior, fitted),
        "efficiencies": {
            f"{device}/{phase}": {
                "eta_compute": value.eta_compute,
                "eta_memory": value.eta_memory,
                "overhead_s": value.overhead_s,
                "fitted": value.source.startswith("fitted"),
            }
            for (device, phase), value in efficiencies.items()
        },
        "predictions": [
            {
                "line": int(row.where.rsplit(":", 1)[1]),
                "device": row.device,
                "model": row.model,
                "dtype": row.dtype,
                "devices": row.devices,
                "batch": row.batch,
                "input_len": row.input_len,
                "output_len": row.output_len,
                "metric": row.metric,
                "measured": row.value,
                "prior": round(predict_metric(prior, row), 6),
                "fitted": round(predict_metric(fitted, row), 6),
                "error_pct": round(100 * (predict_metric(fitted, row) - row.value) / row.value, 1),
            }
            for row in usable_evaluation
        ],
    }


def _print_table(title: str, groups: dict[str, dict]) -> None:
    print(f"\n{title:<22} {'rows':>5} {'prior MAPE %':>13} {'fitted MAPE %':>14}")
    for name, entry in groups.items():
        print(
            f"{name:<22} {entry['rows']:>5} {entry['prior_mape_pct']:>13.1f} "
            f"{entry['mape_pct']:>14.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measurements", type=Path, default=MEASUREMENTS)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    results = evaluate(args.measurements)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        print(json.dumps(results, indent=2))
        return
    rows, skipped = results["rows"], results["skipped_rows"]
    print(
        f"fitted on {rows['calibration']} calibration rows, evaluated on {rows['evaluation']} "
        f"evaluation rows; skipped {skipped['calibration']} + {skipped['evaluation']} rows "
        f"without a batch (max-load runs)"
    )
    _print_table("evaluation, per device", results["per_device"])
    _print_table("evaluation, per metric", results["per_metric"])
    fit_quality = results["calibration_fit"]
    print(
        f"\ncalibration split (in-sample): MAPE {fit_quality['prior_mape_pct']:.1f}% prior, "
        f"{fit_quality['mape_pct']:.1f}% fitted"
    )
    verdict = "meets" if results["meets_target"] else "misses"
    print(
        f"evaluation split: MAPE {results['prior_mape_pct']:.1f}% with the packaged priors, "
        f"{results['mape_pct']:.1f}% fitted ({verdict} the {TARGET_PCT:g}% target)"
    )


if __name__ == "__main__":
    main()
