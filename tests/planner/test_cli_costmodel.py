"""`hetagent costmodel predict` and `calibrate` as a user runs them: the installed script, in a
subprocess whose home directory and HETAGENT_EFFICIENCY point into tmp_path, so no calibration
file of the user's is read or written."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hetagent.planner.calibrate import MEASUREMENT_COLUMNS
from hetagent.planner.catalog import read_efficiencies

HETAGENT = str(Path(sys.executable).parent / "hetagent")
PREDICTION_KEYS = {"prefill_s", "decode_step_s", "ttft_s", "output_tokens_per_s", "e2e_s", "bound"}


@pytest.fixture
def run(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    env = os.environ | {"HOME": str(home), "HETAGENT_EFFICIENCY": str(tmp_path / "eff.csv")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [HETAGENT, "costmodel", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            check=False,
            timeout=60,
        )

    return run


def test_predict_json_has_the_phases_and_the_bound(run) -> None:
    result = run(
        "predict", "--model", "llama-3.1-8b", "--device", "h100", "--input-len", "512",
        "--output-len", "128", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    prediction = json.loads(result.stdout)
    assert set(prediction) == PREDICTION_KEYS
    assert prediction["bound"] == "memory"  # batch-1 decode
    assert prediction["e2e_s"] == pytest.approx(
        prediction["prefill_s"] + 128 * prediction["decode_step_s"]
    )


def test_predict_csv_appends_the_prediction_columns_to_each_row(run, tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text(
        "model,device,devices,dtype,batch,input_len,output_len,label\n"
        "llama-3.1-8b,h100,1,bf16,1,512,128,chat\n"
        "llama-3.1-70b,h100,2,fp8,16,2048,256,rag\n"
    )
    result = run("predict", "--csv", str(rows))
    assert result.returncode == 0, result.stderr
    out = list(csv.DictReader(result.stdout.splitlines()))
    assert [row["label"] for row in out] == ["chat", "rag"]
    header = result.stdout.splitlines()[0].split(",")
    assert header[:8] == ["model", "device", "devices", "dtype", "batch", "input_len",
                          "output_len", "label"]  # fmt: skip
    assert set(header[8:]) == PREDICTION_KEYS


def test_an_unknown_model_is_one_line_and_exit_2(run) -> None:
    result = run("predict", "--model", "llama-9", "--device", "h100", "--output-len", "8")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["unknown model 'llama-9'"]
    assert "Traceback" not in result.stderr


def _measurements(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, MEASUREMENT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _e2e(device: str, model: str, devices: int, seconds: float) -> dict[str, str]:
    """vLLM's nightly latency benchmark: batch 8, 32 tokens in, 128 out."""
    return {
        "device": device, "model": model, "dtype": "bf16", "devices": str(devices),
        "batch": "8", "input_len": "32", "output_len": "128", "metric": "e2e_s",
        "value": str(seconds), "unit": "s", "split": "calibration",
        "source": "vLLM nightly benchmark_latency", "notes": "",
    }  # fmt: skip


MEASURED = [
    _e2e("h100", "llama-3.1-8b", 1, 0.997542),
    _e2e("h100", "llama-3.1-70b", 4, 2.44447),
    _e2e("h100", "mixtral-8x7b", 2, 2.32697),
    _e2e("a100", "llama-3.1-8b", 1, 1.57927) | {"split": "evaluation"},
]


def test_calibrate_writes_the_fitted_efficiencies_where_hetagent_efficiency_says(
    run, tmp_path: Path
) -> None:
    measurements = _measurements(tmp_path / "measured.csv", MEASURED)
    result = run("calibrate", "--measurements", str(measurements))
    assert result.returncode == 0, result.stderr
    written = read_efficiencies(tmp_path / "eff.csv")
    assert set(written) == {("h100", "prefill"), ("h100", "decode")}  # the calibration split
    decode = written[("h100", "decode")]
    assert decode.source.startswith(
        f"fitted by hetagent costmodel calibrate on 3 rows of {measurements}"
    )
    assert written[("h100", "prefill")].source.startswith("prior kept")  # decode-dominated rows
    assert "h100" in result.stdout and "MAPE" in result.stdout
    assert not any((tmp_path / "home").iterdir())

    # The next prediction uses the file: the step time is the fitted one.
    again = run("predict", "--model", "llama-3.1-8b", "--device", "h100", "--output-len", "8",
                "--json")  # fmt: skip
    step = json.loads(again.stdout)["decode_step_s"]
    weights = 8.03e9 * 2
    assert step == pytest.approx(
        weights / (decode.eta_memory * 3350e9) + decode.overhead_s, rel=0.01
    )


def test_calibrate_all_splits_to_an_explicit_output(run, tmp_path: Path) -> None:
    measurements = _measurements(tmp_path / "measured.csv", MEASURED)
    output = tmp_path / "out" / "efficiency.csv"
    result = run("calibrate", "--measurements", str(measurements), "--split", "all",
                 "--output", str(output))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert {device for device, _ in read_efficiencies(output)} == {"h100", "a100"}
    assert not (tmp_path / "eff.csv").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "train"], "unknown --split 'train'; use one of calibration, all"),
        (["--measurements", "missing.csv"], "cannot read missing.csv: No such file or directory"),
    ],
)
def test_calibrate_user_errors_are_one_line_and_exit_2(run, tmp_path, args, message) -> None:
    measurements = _measurements(tmp_path / "measured.csv", MEASURED)
    result = run("calibrate", "--measurements", str(measurements), *args)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [message]


def test_calibrate_names_the_line_and_column_of_a_bad_row(run, tmp_path: Path) -> None:
    measurements = _measurements(
        tmp_path / "measured.csv", [*MEASURED, MEASURED[0] | {"value": "1,2"}]
    )
    result = run("calibrate", "--measurements", str(measurements))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{measurements}:6: column 'value': expected a number > 0, got '1,2'"
    ]
    assert not (tmp_path / "eff.csv").exists()
