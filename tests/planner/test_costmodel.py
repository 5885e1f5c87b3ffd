"""The cost model, its TCO companion and its calibration, checked against numbers worked out by
hand from the catalogs (placement-tco.md gives the equations).

Every cost model here gets its efficiencies explicitly, so neither the packaged priors changing
nor a calibration file in the home directory moves these numbers.
"""

import csv
import dataclasses
import re
from pathlib import Path

import pytest

from hetagent.planner.calibrate import (
    MEASUREMENT_COLUMNS,
    Measurement,
    fit,
    packaged_efficiencies,
    predict_metric,
    read_measurements,
    write_efficiencies,
)
from hetagent.planner.catalog import Efficiency, load_catalog, read_efficiencies
from hetagent.planner.catalog import efficiency as catalog_efficiency
from hetagent.planner.costmodel import CostModel
from hetagent.planner.tco import capital_recovery_factor, device_hour_cost
from hetagent.planner.workload import weights_read_per_step
from hetagent.spec import ClusterSpec

CATALOG = load_catalog()
H100 = CATALOG.devices["h100"]
LLAMA_8B = CATALOG.models["llama-3.1-8b"]
LLAMA_70B = CATALOG.models["llama-3.1-70b"]
MIXTRAL = CATALOG.models["mixtral-8x7b"]

PREFILL = Efficiency(eta_compute=0.6, eta_memory=0.8, overhead_s=0.002, source="test")
DECODE = Efficiency(eta_compute=0.5, eta_memory=0.85, overhead_s=0.002, source="test")
GPU = {("gpu", "prefill"): PREFILL, ("gpu", "decode"): DECODE}


@pytest.fixture
def model() -> CostModel:
    return CostModel(efficiencies=GPU)


# -- the roofline ---------------------------------------------------------------------------------


def test_batch_1_decode_is_memory_bound_and_reads_the_weights_once_per_step(model) -> None:
    # llama-3.1-8b: 8.03e9 parameters of 2 bytes; KV of one token: K and V x 32 layers x 8 KV
    # heads x 128 x 2 bytes = 131,072 bytes. H100: 3350 GB/s.
    weight_bytes = 8.03e9 * 2
    kv_bytes = 1024 * 2 * 32 * 8 * 128 * 2
    step = model.decode_step(LLAMA_8B, H100, context=1024, batch=1)
    assert step.bound == "memory"
    assert step.seconds == pytest.approx((weight_bytes + kv_bytes) / (0.85 * 3350e9) + 0.002)
    assert kv_bytes < 0.01 * weight_bytes  # so the step is the weight bytes over the bandwidth:
    assert step.seconds == pytest.approx(weight_bytes / (0.85 * 3350e9) + 0.002, rel=0.01)


def test_a_large_batch_long_prefill_is_compute_bound(model) -> None:
    # 8 prompts of 4096 tokens: 2·N per token plus causal attention 2·layers·(heads·head_dim)·L².
    tokens, batch = 4096, 8
    flops = 2 * 8.03e9 * tokens * batch + 2 * 32 * (32 * 128) * tokens * tokens * batch
    prefill = model.prefill(LLAMA_8B, H100, tokens, batch=batch)
    assert prefill.bound == "compute"
    assert prefill.seconds == pytest.approx(flops / (0.6 * 989e12) + 0.002)


def test_decodes_ride_along_a_prefill_chunk_in_one_pass_that_reads_the_weights_once(model) -> None:
    chunk = model.prefill(LLAMA_8B, H100, 512, prefix=1024)
    decodes = model.decode_step(LLAMA_8B, H100, context=2048, batch=8)
    mixed = model.step(LLAMA_8B, H100, 512, prefix=1024, batch=8, context=2048)
    assert model.step(LLAMA_8B, H100, 512, prefix=1024).seconds == chunk.seconds
    assert model.step(LLAMA_8B, H100, 0, batch=8, context=2048).seconds == decodes.seconds
    # one overhead and one read of the weights, not the two of separate passes
    assert chunk.seconds < mixed.seconds < chunk.seconds + decodes.seconds - 0.002
    # the 8 decode tokens add their own FLOPs and their contexts' KV reads to the chunk's
    weights = 8.03e9 * 2
    assert mixed.seconds - chunk.seconds < decodes.seconds - weights / (0.85 * 3350e9)


def test_fp8_halves_the_compute_time_of_a_compute_bound_prefill_on_h100(model) -> None:
    bf16 = model.prefill(LLAMA_8B, H100, 4096, batch=8, dtype="bf16")
    fp8 = model.prefill(LLAMA_8B, H100, 4096, batch=8, dtype="fp8")
    assert bf16.bound == fp8.bound == "compute"
    # H100 dense peaks: 989 TFLOP/s bf16, 1979 fp8.
    assert (fp8.seconds - 0.002) / (bf16.seconds - 0.002) == pytest.approx(989 / 1979)


def test_a_70b_bf16_model_needs_two_80_gb_devices(model) -> None:
    # 70.6e9 x 2 bytes = 141 GB of weights; one H100 holds 0.9 x 80 = 72 GB, two hold 144 GB.
    assert model.min_devices(LLAMA_70B, H100, batch=1, context=4096) == 2
    assert model.min_devices(LLAMA_8B, H100, batch=1, context=4096) == 1


def test_tensor_parallelism_adds_all_reduce_traffic_over_the_scale_up_link(model) -> None:
    # Over a link slow enough to dominate, a decode step of one token on k devices takes the
    # two ring all-reduces per layer of its activations: 2 · layers · 2(k-1)/k · hidden · 2 bytes.
    slow = dataclasses.replace(H100, scaleup_bandwidth_gb_s=0.002)  # 1 MB/s each way
    for k in (2, 4):
        step = model.decode_step(LLAMA_70B, slow, context=1024, batch=1, devices=k)
        sent = 2 * 80 * 2 * (k - 1) / k * 8192 * 2
        assert step.bound == "network"
        assert step.seconds == pytest.approx(sent / 1e6 + 0.002)
    alone = model.decode_step(LLAMA_8B, slow, context=1024, batch=1, devices=1)
    assert alone.bound == "memory"  # one device sends nothing


def test_a_mixture_of_experts_reads_fewer_weights_at_batch_1_than_at_batch_64() -> None:
    # mixtral-8x7b: 46.7B parameters, 12.9B active (2 of 8 experts a token). One token reads the
    # shared weights and two experts; 64 tokens touch practically all eight.
    one = weights_read_per_step(MIXTRAL, batch=1)
    many = weights_read_per_step(MIXTRAL, batch=64)
    assert one == pytest.approx(12.9e9 * 2)
    assert many == pytest.approx(46.7e9 * 2, rel=1e-3)
    assert one < many / 3


def test_an_explicit_efficiency_table_comes_before_the_catalog() -> None:
    own = Efficiency(0.3, 0.4, 0.01, "test")
    model = CostModel(efficiencies={("h100", "decode"): own})
    assert model.efficiency(H100, "decode") is own
    assert model.efficiency(CATALOG.devices["a100"], "decode") is not own  # the catalog's
    # without a table, the catalog's figures (the packaged priors in the test environment)
    assert CostModel(CATALOG).efficiency(H100, "decode") == catalog_efficiency(H100, "decode")


# -- TCO -------------------------------------------------------------------------------------------


def _cluster(**pool: object) -> ClusterSpec:
    return ClusterSpec.model_validate(
        {
            "pools": [{"name": "gpus", "device": "h100", "count": 8, **pool}],
            "energy": {"pricePerKWh": 0.08, "pue": 1.3, "utilization": 0.5},
            "amortization": {"years": 4.0, "rate": 0.08},
        }
    )


def test_the_capital_recovery_factor_of_4_years_at_8_percent() -> None:
    # r(1+r)^N / ((1+r)^N - 1) = 0.08 · 1.3605 / 0.3605
    assert capital_recovery_factor(0.08, 4) == pytest.approx(0.3019, abs=1e-4)
    assert capital_recovery_factor(0.0, 4) == 0.25


def test_an_owned_h100_costs_its_amortized_price_plus_power() -> None:
    cluster = _cluster(ownership="owned")
    hourly = device_hour_cost(cluster.pools[0], H100, cluster)
    # $25,000 · 0.3019 / 8760 h ≈ $0.86/h (placement-tco.md); power: 700 W · 0.5 · 1.3 · $0.08.
    assert H100.purchase_usd == 25_000 and H100.tdp_w == 700
    assert hourly.capital == pytest.approx(0.86, abs=0.005)
    assert hourly.energy == pytest.approx(0.7 * 0.5 * 1.3 * 0.08)
    assert hourly.rent == 0
    assert hourly.total == pytest.approx(hourly.capital + hourly.energy)


def test_a_pools_own_price_wins_over_the_catalogs() -> None:
    rented = _cluster(ownership="rented", pricePerHour=2.49)
    hourly = device_hour_cost(rented.pools[0], H100, rented)
    assert (hourly.rent, hourly.capital, hourly.energy) == (2.49, 0, 0)
    listed = _cluster(ownership="rented")
    assert device_hour_cost(listed.pools[0], H100, listed).rent == H100.rent_usd_per_hour


# -- calibration -----------------------------------------------------------------------------------


def _row(metric: str, model: str, batch: int | None, input_len: int, output_len: int, **kw):
    values = {
        "device": "h100",
        "model": model,
        "dtype": "bf16",
        "devices": 1,
        "batch": batch,
        "input_len": input_len,
        "output_len": output_len,
        "metric": metric,
        "value": 1.0,
        "unit": "tokens/s" if metric.endswith("per_s") else "s",
        "split": "calibration",
        "source": "synthetic",
        "notes": "",
    }
    return Measurement(**(values | kw))


def test_each_metric_maps_onto_the_phases_of_the_cost_model(model) -> None:
    batch, input_len, output_len = 4, 512, 256
    prefill = model.prefill(LLAMA_8B, H100, input_len, batch=batch).seconds
    step = model.decode_step(LLAMA_8B, H100, input_len + output_len // 2, batch=batch).seconds
    expected = {
        "ttft_s": prefill,
        "tpot_s": step,
        "decode_tokens_per_s": batch * output_len / (prefill + output_len * step),
        "prefill_tokens_per_s": batch * input_len / prefill,
        "e2e_s": prefill + output_len * step,
    }
    for metric, value in expected.items():
        row = _row(metric, "llama-3.1-8b", batch, input_len, output_len)
        assert predict_metric(model, row) == pytest.approx(value), metric
    e2e = _row("e2e_s", "llama-3.1-8b", batch, input_len, output_len)
    predicted = model.predict("llama-3.1-8b", "h100", batch=batch, input_len=512, output_len=256)
    assert predict_metric(model, e2e) == pytest.approx(predicted.e2e_s)


def test_calibration_recovers_the_efficiencies_that_generated_the_rows() -> None:
    truth = {
        ("h100", "prefill"): Efficiency(0.45, 0.7, 0.004, "truth"),
        ("h100", "decode"): Efficiency(0.35, 0.75, 0.0015, "truth"),
    }
    generator = CostModel(efficiencies=packaged_efficiencies() | truth)
    shapes = [  # each figure bounds some of them: compute, memory, overhead, in both phases
        ("ttft_s", "llama-3.1-8b", 8, 2048, 1),
        ("ttft_s", "llama-3.1-8b", 4, 4096, 1),
        ("ttft_s", "llama-3.1-8b", 1, 16, 1),
        ("ttft_s", "llama-3.2-1b", 1, 4, 1),
        ("prefill_tokens_per_s", "llama-3.1-70b", 1, 32, 1),
        ("tpot_s", "llama-3.1-8b", 1, 128, 128),
        ("tpot_s", "llama-3.2-1b", 1, 128, 128),
        ("tpot_s", "llama-3.1-8b", 1024, 128, 2),
        ("tpot_s", "llama-3.1-8b", 2048, 64, 2),
        ("e2e_s", "llama-3.1-8b", 8, 32, 128),
        ("decode_tokens_per_s", "llama-3.1-8b", 64, 1024, 1024),
    ]
    rows = []
    for metric, model_id, batch, input_len, output_len in shapes:
        row = _row(metric, model_id, batch, input_len, output_len)
        rows.append(dataclasses.replace(row, value=predict_metric(generator, row)))
    fitted = fit(rows)  # from the packaged priors (0.6/0.8/2 ms and 0.5/0.85/2 ms)
    for key, expected in truth.items():
        got = fitted[key]
        assert got.eta_compute == pytest.approx(expected.eta_compute, rel=0.02), key
        assert got.eta_memory == pytest.approx(expected.eta_memory, rel=0.02), key
        assert got.overhead_s == pytest.approx(expected.overhead_s, rel=0.02), key
        assert got.source.startswith("fitted by hetagent costmodel calibrate on"), key


def test_max_load_rows_are_skipped_and_phases_without_rows_keep_their_prior() -> None:
    rows = [
        _row("tpot_s", "llama-3.1-8b", 1, 128, 128, value=0.008),
        _row("tpot_s", "llama-3.2-1b", 1, 128, 128, value=0.003),
        _row("decode_tokens_per_s", "llama-3.1-8b", None, 128, 2048, value=20_000.0),
        _row("decode_tokens_per_s", "llama-3.1-8b", None, 2048, 128, value=3_000.0, device="l4"),
    ]
    fitted = fit(rows, origin="rows.csv")
    assert (
        fitted[("h100", "decode")].source
        == "fitted by hetagent costmodel calibrate on 2 rows of rows.csv"
    )
    prior = packaged_efficiencies()[("gpu", "prefill")]
    kept = fitted[("h100", "prefill")]
    assert (kept.eta_compute, kept.eta_memory, kept.overhead_s) == (
        prior.eta_compute,
        prior.eta_memory,
        prior.overhead_s,
    )
    assert kept.source.startswith("prior kept by hetagent costmodel calibrate")
    assert "0 rows of rows.csv" in kept.source
    assert fitted[("l4", "decode")].source.startswith("prior kept")  # only a max-load row


def test_fitted_figures_are_written_in_the_packaged_columns_and_read_back(tmp_path) -> None:
    fitted = {("h100", "decode"): Efficiency(0.4, 0.7, 0.0015, "fitted by test on 3 rows of x")}
    path = tmp_path / "deep" / "efficiency.csv"
    write_efficiencies(path, fitted, "2025-06-01")
    back = read_efficiencies(path)
    assert back == {
        ("h100", "decode"): Efficiency(
            0.4, 0.7, 0.0015, "fitted by test on 3 rows of x (2025-06-01)"
        )
    }
    header = path.read_text().splitlines()[0]
    packaged = (Path(__file__).parents[2] / "planner/catalog/efficiency.csv").read_text()
    assert header == packaged.splitlines()[0]


def _write_measurements(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, MEASUREMENT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


GOOD = {
    "device": "h100",
    "model": "llama-3.1-8b",
    "dtype": "bf16",
    "devices": "1",
    "batch": "8",
    "input_len": "32",
    "output_len": "128",
    "metric": "e2e_s",
    "value": "0.9975",
    "unit": "s",
    "split": "calibration",
    "source": "vLLM nightly benchmarks",
    "notes": "",
}


def test_measurements_are_read_into_typed_rows(tmp_path) -> None:
    path = _write_measurements(
        tmp_path / "m.csv", [GOOD, GOOD | {"batch": "", "split": "evaluation"}]
    )
    first, second = read_measurements(path)
    assert (first.batch, first.input_len, first.value, first.where) == (8, 32, 0.9975, f"{path}:2")
    assert second.batch is None


@pytest.mark.parametrize(
    ("change", "column"),
    [
        ({"value": "fast"}, "value"),
        ({"value": "-1"}, "value"),
        ({"batch": "0"}, "batch"),
        ({"device": "h1000"}, "device"),
        ({"model": "llama-9"}, "model"),
        ({"metric": "latency"}, "metric"),
        ({"unit": "ms"}, "unit"),
        ({"split": "train"}, "split"),
        ({"output_len": ""}, "output_len"),
    ],
)
def test_a_malformed_measurement_row_names_its_file_line_and_column(tmp_path, change, column):
    path = _write_measurements(tmp_path / "m.csv", [GOOD, GOOD | change])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:3: column '{column}': "):
        read_measurements(path)
