"""FileCheck tests, one file per pass: `// RUN: <pass> [placement]`, the input module, CHECK lines.

The placement of a RUN line is JSON: pools, a pool per op kind, and a default pool."""

import json
import subprocess
from pathlib import Path

import pytest
from xdsl.parser import Parser

from hetagent.compiler import print_generic
from hetagent.compiler.dialects import make_context
from hetagent.compiler.passes import PASSES, run_passes
from hetagent.compiler.placement import Placement, Pool, placed_ops

GOLDEN = sorted((Path(__file__).parent / "golden").glob("*.mlir"))


def run_line(text: str) -> tuple[str, dict | None]:
    line = next(line for line in text.splitlines() if line.startswith("// RUN: "))
    name, _, options = line.removeprefix("// RUN: ").partition(" ")
    return name, json.loads(options) if options else None


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_pass_output_matches_its_checks(path: Path, installed):
    text = path.read_text()
    name, rule = run_line(text)
    module = Parser(make_context(), text).parse_module()
    if rule is None:
        module_pass = PASSES[name]()
    else:
        pools = tuple(Pool(*pool) for pool in rule["pools"])
        assignment = {
            op.attr("id"): rule["byKind"].get(op.name, rule["default"]) for op in placed_ops(module)
        }
        module_pass = PASSES[name](Placement(pools, assignment))
    run_passes(module, [module_pass])
    result = subprocess.run(
        [installed("filecheck"), str(path)],
        input=print_generic(module),
        text=True,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_pass_has_a_golden_file():
    assert {run_line(p.read_text())[0] for p in GOLDEN} == set(PASSES)
