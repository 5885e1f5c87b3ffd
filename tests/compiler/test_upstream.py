"""Upstream MLIR (iree-opt with our IRDL) accepts what the compiler prints, rejects broken IR."""

import subprocess
from pathlib import Path

import pytest

import hetagent
from hetagent.compiler import lower, print_generic
from hetagent.compiler.placement import MODEL_OPS, Placement, Pool, placed_ops

AGENTS = sorted((Path(__file__).parents[2] / "examples" / "agents").glob("*.yaml"))
POOLS = (Pool("gpu", "h100", 8), Pool("cpu", "xeon-8480", 4))


def iree_opt(installed, irdl_file: Path, text: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [installed("iree-opt"), f"--irdl-file={irdl_file}", "-"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("path", AGENTS, ids=lambda p: p.stem)
@pytest.mark.parametrize("level", ["agent", "ops", "placed"])
def test_upstream_mlir_verifies_every_example(path, level, installed, irdl_file):
    graph = hetagent.load(path)
    placement = None
    if level == "placed":
        module = lower(graph, "ops")
        placement = Placement(
            POOLS,
            {
                op.attr("id"): "gpu" if isinstance(op, MODEL_OPS) else "cpu"
                for op in placed_ops(module)
            },
        )
    result = iree_opt(installed, irdl_file, print_generic(lower(graph, level, placement)))
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def lowered_text() -> str:
    return print_generic(lower(hetagent.load(AGENTS[0].parent / "rag-qa.yaml"), "ops"))


@pytest.mark.parametrize(
    ("edits", "error"),
    [
        # a decode fed the prompt's tokens instead of a KV cache (the operand and its type)
        (
            [
                ('"llm.decode"(%4)', '"llm.decode"(%3)'),
                (
                    ': (!llm.kv<"llama-3.1-8b">) -> (!llm.tokens',
                    ': (!llm.tokens<"llama-3.1-8b">) -> (!llm.tokens',
                ),
            ],
            "expected base type 'llm.kv'",
        ),
        ([('id = "answer.prefill", ', "")], 'attribute "id" is expected'),
        ([('"llm.prefill"', '"llm.prefil"')], "unregistered operation 'llm.prefil'"),
    ],
    ids=["wrong-operand-type", "missing-attribute", "misspelled-op"],
)
def test_upstream_mlir_rejects_broken_ir(lowered_text, edits, error, installed, irdl_file):
    text = lowered_text
    for old, new in edits:
        assert old in text
        text = text.replace(old, new, 1)
    result = iree_opt(installed, irdl_file, text)
    assert result.returncode != 0
    assert error in result.stderr
