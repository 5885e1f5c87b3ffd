"""Shared fixtures for the compiler's tests."""

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="session")
def agents() -> list[Path]:
    return sorted((ROOT / "examples" / "agents").glob("*.yaml"))


@pytest.fixture(scope="session")
def irdl_file() -> Path:
    return ROOT / "compiler" / "irdl" / "hetagent.irdl"


@pytest.fixture(scope="session")
def installed() -> Callable[[str], str]:
    """The path of a console script installed with the dev dependencies (iree-opt, filecheck)."""

    def find(name: str) -> str:
        path = Path(sys.executable).parent / name
        found = str(path) if path.exists() else shutil.which(name)
        if found is None:
            pytest.fail(f"{name} is not installed: run `make setup` (a dev dependency)")
        return found

    return find
