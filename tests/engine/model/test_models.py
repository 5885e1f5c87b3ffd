"""The model registry and cache: clear one-line errors for what is missing or unknown."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hetagent.backends.local.engine import models
from hetagent.backends.local.engine.models_cli import app


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HETAGENT_MODELS", str(tmp_path))
    return tmp_path


def test_a_registry_model_missing_from_the_cache_says_how_to_fetch_it(empty_cache):
    with pytest.raises(models.ModelNotAvailable) as error:
        models.load("smollm2-135m")
    message = str(error.value)
    assert "\n" not in message
    assert message == (
        f"model smollm2-135m is not in the cache ({empty_cache}); fetch it with "
        "`hetagent models pull smollm2-135m`"
    )


def test_an_unknown_name_lists_what_would_work(empty_cache):
    with pytest.raises(models.ModelNotAvailable, match=r"registry name .*smollm2-135m.*dummy:"):
        models.load("gpt-17")


def test_a_file_that_is_not_gguf_gives_one_line(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(models.ModelNotAvailable, match="cannot load model") as error:
        models.load(str(bad))
    assert "\n" not in str(error.value)


def test_cli_lists_registry_models_and_rejects_unknown_pulls(empty_cache):
    runner = CliRunner()
    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0
    assert "smollm2-135m" in listed.output and "not cached" in listed.output
    refused = runner.invoke(app, ["pull", "gpt-17"])
    assert refused.exit_code == 2
    assert "unknown model 'gpt-17'" in refused.output


def test_cached_model_is_listed_with_its_path(smollm_path, monkeypatch):
    monkeypatch.setenv("HETAGENT_MODELS", str(smollm_path.parent.parent))
    assert models.pull("smollm2-135m") == smollm_path  # present: no download
    assert str(smollm_path) in CliRunner().invoke(app, ["list"]).output


def test_registry_entries_pin_a_version_and_checksum():
    for entry in models.registry().values():
        assert entry.version and len(entry.sha256) == 64 and entry.source
        assert entry.wheel_member.endswith(".gguf")


def test_dummy_weights_too_large_for_memory_are_refused_before_allocating():
    with pytest.raises(models.ModelNotAvailable, match=r"needs \d+\.\d GB of weights"):
        models.load("dummy:llama-3.1-70b")  # 282 GB at float32
