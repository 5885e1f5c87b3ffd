"""The README's Python examples run as written, so the quick tour stays true."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code: str, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    namespace = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["graph"].metadata.name == "rag-qa"


def test_readme_has_python_examples():
    assert BLOCKS
