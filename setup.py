"""Maps the repository's component folders onto the `hetagent` namespace.

`hetagent/` is the front door; every other component folder at the root (`planner/`, `compiler/`,
...) is installed as `hetagent.<folder>`. Packages are discovered by walking the folders, so adding
a subpackage needs no edit here. Works for `pip install .` and `pip install -e .` alike.
"""

from pathlib import Path

from setuptools import setup

COMPONENTS = ("compiler", "planner", "orchestrator", "backends", "tools", "kernels", "policies")
PACKAGE_DATA = ["*.csv", "*.yaml", "*.json", "*.irdl", "*.mlir", "*.html", "*.js", "*.css"]
ROOT = Path(__file__).parent


def _packages() -> tuple[list[str], dict[str, str]]:
    package_dir = {"hetagent": "hetagent"} | {f"hetagent.{c}": c for c in COMPONENTS}
    packages = []
    for prefix, folder in package_dir.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            relative = init.parent.relative_to(ROOT / folder)
            packages.append(".".join([prefix, *relative.parts]))
    return packages, package_dir


packages, package_dir = _packages()
setup(
    packages=packages,
    package_dir=package_dir,
    package_data={name: PACKAGE_DATA for name in packages},
)
