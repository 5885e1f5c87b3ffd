"""The folder layout installs as the `hetagent` namespace, editable and as a built wheel."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
COMPONENTS = ("compiler", "planner", "orchestrator", "backends", "tools", "kernels", "policies")


def component_packages() -> dict[str, Path]:
    """`hetagent.planner.catalog` -> its folder, for every package of every component folder."""
    packages = {}
    for component in COMPONENTS:
        for init in (ROOT / component).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / component)
            packages[".".join(["hetagent", component, *relative.parts])] = init.parent
    return packages


def test_every_component_imports_from_its_own_folder():
    import importlib

    for name, folder in component_packages().items():
        module = importlib.import_module(name)
        assert Path(module.__file__).parent == folder, name


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    (path,) = out.glob("hetagent-*.whl")
    return path


def test_wheel_holds_every_package_and_the_catalog_data(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in component_packages():
        assert package.replace(".", "/") + "/__init__.py" in names
    assert "hetagent/planner/catalog/devices.csv" in names
    assert "hetagent/planner/catalog/models.csv" in names
    assert not any(name.startswith(("tests/", "examples/")) for name in names)


def test_installed_wheel_validates_the_examples(wheel: Path, tmp_path: Path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = "import hetagent.planner.catalog as c; print(c.__file__)"
    where = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert where.stdout.startswith(str(target))
    examples = sorted(str(p) for p in (ROOT / "examples").glob("*/*.yaml"))
    result = subprocess.run([sys.executable, "-m", "hetagent.cli", "validate", "-q", *examples],
                            env=env, cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
