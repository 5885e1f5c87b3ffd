"""The planner's device and model catalogs: what every row must carry and how bad rows fail."""

import csv
import dataclasses
import io
from importlib.resources import files
from pathlib import Path

import pytest

from hetagent.planner.catalog import Device, Model, load_catalog, read_rows

CATALOG = load_catalog()
DEVICE_IDS = [
    "b200", "h200", "h100", "a100", "l40s", "l4", "a10g", "t4", "v100", "mi300x", "mi250",
    "gaudi2", "gaudi3", "ascend-910b", "inferentia2", "trainium1", "trainium2", "tpu-v5e",
    "xeon-8480", "xeon-6980p", "epyc-9654", "a40", "host-cpu",
]  # fmt: skip
MODEL_IDS = [
    "llama-3.1-8b", "llama-3.1-70b", "llama-3.2-1b", "llama-3.2-3b", "qwen2.5-7b", "qwen2.5-32b",
    "qwen2.5-72b", "mixtral-8x7b", "smollm2-135m", "minilm-l6", "whisper-large-v3", "kokoro-82m",
]  # fmt: skip
DECODERS = [m for m in CATALOG.models.values() if m.kind == "decoder"]
NUMERIC_DEVICE_FIELDS = [f.name for f in dataclasses.fields(Device) if f.type == float | None]


def test_the_catalogs_hold_the_agreed_ids_in_file_order() -> None:
    assert list(CATALOG.devices) == DEVICE_IDS
    assert list(CATALOG.models) == MODEL_IDS


def test_every_device_names_its_spec_source_and_confidence() -> None:
    for device in CATALOG.devices.values():
        assert device.spec_source, device.id
        assert device.confidence, device.id


def test_well_known_device_numbers_are_reproduced() -> None:
    h100, b200 = CATALOG.devices["h100"], CATALOG.devices["b200"]
    assert (h100.bf16_tflops, h100.memory_gb, h100.memory_bandwidth_gb_s) == (989, 80, 3350)
    assert h100.kind == "gpu"
    assert b200.memory_gb == 180
    assert CATALOG.devices["a100"].fp8_tflops is None  # no FP8 on Ampere: unknown, not zero


def test_a_price_always_comes_with_its_basis() -> None:
    for device in CATALOG.devices.values():
        if device.rent_usd_per_hour is not None:
            assert device.rent_basis, device.id
        if device.purchase_usd is not None:
            assert device.purchase_basis, device.id


def test_fp8_peak_is_never_below_the_bf16_peak() -> None:
    for device in CATALOG.devices.values():
        if device.fp8_tflops is not None and device.bf16_tflops is not None:
            assert device.fp8_tflops >= device.bf16_tflops, device.id


def test_the_host_cpu_has_no_numbers_because_the_planner_calibrates_it() -> None:
    host = CATALOG.devices["host-cpu"]
    assert host.kind == "cpu"
    assert all(getattr(host, name) is None for name in NUMERIC_DEVICE_FIELDS)
    assert "calibrat" in host.notes


def test_every_model_names_its_source_and_parameter_count() -> None:
    for model in CATALOG.models.values():
        assert "config.json" in model.source, model.id
        assert model.params_b and model.active_params_b, model.id
        assert model.active_params_b <= model.params_b, model.id


def test_only_mixture_of_experts_models_have_fewer_active_parameters() -> None:
    mixtral = CATALOG.models["mixtral-8x7b"]
    assert mixtral.active_params_b is not None and mixtral.params_b is not None
    assert mixtral.active_params_b < mixtral.params_b
    assert (mixtral.experts, mixtral.experts_per_token) == (8, 2)
    for model in CATALOG.models.values():
        if model.experts is None:
            assert model.active_params_b == model.params_b, model.id


@pytest.mark.parametrize("model", DECODERS, ids=lambda m: m.id)
def test_decoder_attention_shapes_are_consistent(model: Model) -> None:
    assert model.heads and model.kv_heads and model.head_dim and model.hidden_size
    assert model.heads % model.kv_heads == 0  # grouped-query attention shares KV heads evenly
    assert model.head_dim % 2 == 0  # RoPE rotates pairs of dimensions
    assert model.hidden_size / 2 <= model.heads * model.head_dim <= model.hidden_size * 2


def _parameters_b(model: Model, experts: int) -> float:
    """Weights of a Llama-style decoder (norms and biases ignored), in billions."""
    assert model.layers and model.hidden_size and model.heads and model.kv_heads
    assert model.head_dim and model.intermediate_size and model.vocab_size
    attention = 2 * model.hidden_size * model.head_dim * (model.heads + model.kv_heads)
    mlp = 3 * model.hidden_size * model.intermediate_size * experts
    embeddings = model.vocab_size * model.hidden_size * (1 if model.tied_embeddings else 2)
    return (model.layers * (attention + mlp) + embeddings) / 1e9


def test_llama_3_1_8b_parameter_count_matches_its_architecture() -> None:
    model = CATALOG.models["llama-3.1-8b"]
    assert model.params_b == pytest.approx(_parameters_b(model, experts=1), rel=0.05)


@pytest.mark.parametrize("model", DECODERS, ids=lambda m: m.id)
def test_decoder_parameter_counts_match_their_architecture(model: Model) -> None:
    total = _parameters_b(model, experts=model.experts or 1)
    active = _parameters_b(model, experts=model.experts_per_token or 1)
    assert model.params_b == pytest.approx(total, rel=0.05)
    assert model.active_params_b == pytest.approx(active, rel=0.05)


def test_catalog_rows_are_immutable_and_loaded_once() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        CATALOG.devices["h100"].memory_gb = 1.0  # type: ignore[misc]
    assert load_catalog() is CATALOG


def _catalog_with_second_row(tmp_path: Path, name: str, **changes: str) -> Path:
    """A copy of a packaged catalog's header and first row, plus that row changed (line 3)."""
    text = (files("hetagent.planner.catalog") / name).read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text))
    first = next(reader)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=reader.fieldnames or [], lineterminator="\n")
    writer.writeheader()
    writer.writerows([first, first | {"id": "other"} | changes])
    path = tmp_path / name
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("changes", "column"),
    [
        ({"bf16_tflops": "fast"}, "bf16_tflops"),
        ({"memory_gb": "-80"}, "memory_gb"),
        ({"kind": "fpga"}, "kind"),
        ({"id": "b200"}, "id"),
        ({"spec_source": ""}, "spec_source"),
    ],
)
def test_a_malformed_device_row_names_file_line_and_column(
    tmp_path: Path, changes: dict[str, str], column: str
) -> None:
    path = _catalog_with_second_row(tmp_path, "devices.csv", **changes)
    with pytest.raises(ValueError, match=rf"devices\.csv:3: column '{column}'"):
        read_rows(path, Device)


@pytest.mark.parametrize(
    ("changes", "column"),
    [({"layers": "32.5"}, "layers"), ({"tied_embeddings": "yes"}, "tied_embeddings")],
)
def test_a_malformed_model_row_names_file_line_and_column(
    tmp_path: Path, changes: dict[str, str], column: str
) -> None:
    path = _catalog_with_second_row(tmp_path, "models.csv", **changes)
    with pytest.raises(ValueError, match=rf"models\.csv:3: column '{column}'"):
        read_rows(path, Model)


def test_a_wrong_header_or_a_ragged_row_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "models.csv"
    path.write_text("id,name\nx,y\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"models\.csv:1: columns must be id,name,kind"):
        read_rows(path, Model)
    good = _catalog_with_second_row(tmp_path, "devices.csv")
    good.write_text(good.read_text(encoding="utf-8") + "extra,cell\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"devices\.csv:4: expected 20 cells"):
        read_rows(good, Device)


def test_a_well_formed_copy_parses_like_the_packaged_catalog(tmp_path: Path) -> None:
    rows = read_rows(_catalog_with_second_row(tmp_path, "devices.csv"), Device)
    assert rows["other"] == dataclasses.replace(CATALOG.devices["b200"], id="other")
