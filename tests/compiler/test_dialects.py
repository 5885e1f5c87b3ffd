"""Verifiers reject malformed ops with a message naming the op; the IRDL file matches the
dialects (op names, types, required attributes)."""

import re

import pytest
from xdsl.dialects.builtin import ModuleOp
from xdsl.irdl import OptAttributeDef
from xdsl.parser import Parser
from xdsl.utils.exceptions import ParseError, VerifyException

from hetagent.compiler.dialects import OUR_DIALECTS, agent, data, hw, kv, llm, make_context, tool
from hetagent.compiler.dialects.base import to_attr


def check(op) -> str:
    with pytest.raises(VerifyException) as error:
        ModuleOp([op]).verify()
    return str(error.value)


def test_prefill_and_decode_values_must_be_of_the_op_model():
    tokens = llm.TokenizeOp.make(
        result_types=[llm.tokens_of("a")], id="x.tok", node="x", model="a", tokens=3
    )
    prefill = llm.PrefillOp.make(
        [tokens.results[0], None], [llm.kv_of("b")], id="x.prefill", node="x", model="a", tokens=3
    )
    with pytest.raises(VerifyException, match=r"llm\.prefill 'x\.prefill': a value of model 'b'"):
        ModuleOp([tokens, prefill]).verify()


def llm_call(**tokens):
    return agent.LlmOp.make([agent.TEXT], id="a", node="a", model="m", **tokens)


def pool(count):
    attributes = {"sym_name": "p", "device": "h100", "count": count}
    return hw.PoolOp(attributes={key: to_attr(value) for key, value in attributes.items()})


MALFORMED = {
    "llm-output": (
        lambda: llm_call(input_tokens=5, output_tokens=9, max_tokens=8),
        "output_tokens exceeds max_tokens",
    ),
    "llm-input": (
        lambda: llm_call(input_tokens=0, output_tokens=1, max_tokens=8),
        "input_tokens must be >= 1",
    ),
    "transform-type": (
        lambda: agent.TransformOp.make(
            [agent.VALUE], id="t", node="t", kind="template", template="x"
        ),
        "a template produces !agent.text",
    ),
    "tool-empty": (
        lambda: agent.ToolOp.make([agent.VALUE], id="t", node="t", tools=[]),
        "tools is empty",
    ),
    "tool-seconds": (
        lambda: agent.ToolOp.make(
            [agent.VALUE], id="t", node="t", tools=["a"], expected_seconds=-1.0
        ),
        "expected_seconds is negative",
    ),
    "exec-cpu": (
        lambda: tool.ExecOp.make([agent.VALUE], id="t", node="t", tools=["a"], cpu=-1.0),
        "cpu must be positive",
    ),
    "parse-format": (
        lambda: data.ParseOp.make([agent.VALUE], id="p", node="p", format="xml", template="x"),
        "format must be one of json, regex, lines",
    ),
    "lease-model": (
        lambda: kv.LeaseOp.make([], [llm.kv_of("m")], id="l", node="l", model="n"),
        "of model 'm'",
    ),
    "pool-count": (lambda: pool(0), "count must be >= 1"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_verifiers_reject_malformed_ops(case):
    build, message = MALFORMED[case]
    assert message in check(build())


def test_a_kv_cache_moves_only_by_kv_transfer():
    lease = kv.LeaseOp.make([], [llm.kv_of("m")], id="l", node="n", model="m")
    move = data.TransferOp.make(
        [lease.results[0]], [llm.kv_of("m")], id="t", node="n", source="gpu", target="npu"
    )
    with pytest.raises(VerifyException, match=r"a KV cache moves by kv\.transfer"):
        ModuleOp([lease, move]).verify()


def test_transfer_to_the_same_pool_is_rejected():
    lease = kv.LeaseOp.make([], [llm.kv_of("m")], id="l", node="n", model="m")
    move = kv.TransferOp.make(
        [lease.results[0]],
        [llm.kv_of("m")],
        id="t",
        node="n",
        model="m",
        source="gpu",
        target="gpu",
    )
    with pytest.raises(VerifyException, match="source and target are both 'gpu'"):
        ModuleOp([lease, move]).verify()


def test_misspelled_ops_do_not_parse():
    op = '"kv.leese"() {id = "a", node = "a", model = "m"} : () -> ()'
    text = f'"builtin.module"() ({{\n  {op}\n}}) : () -> ()'
    with pytest.raises(ParseError):
        Parser(make_context(), text).parse_module()


def test_irdl_file_declares_every_op_type_and_required_attribute(irdl_file):
    text = irdl_file.read_text()
    dialects = dict(re.findall(r"irdl\.dialect @(\w+) \{(.*?)\n\}", text, re.DOTALL))
    for dialect in OUR_DIALECTS:
        body = dialects[dialect.name]
        for attr in dialect.attributes:
            short = attr.name.split(".", 1)[1]
            assert re.search(rf"irdl\.(type|attribute) @{short}\b", body), attr.name
        for op in dialect.operations:
            short = op.name.split(".", 1)[1]
            match = re.search(rf"irdl\.operation @{short} \{{(.*?)\n  \}}", body, re.DOTALL)
            assert match, f"{op.name} is missing from {irdl_file.name}"
            declared = set(re.findall(r'"(\w+)" = %', match.group(1)))
            op_def = op.get_irdl_definition()
            required = {
                name
                for name, attr_def in op_def.attributes.items()
                if not isinstance(attr_def, OptAttributeDef) and name != "operandSegmentSizes"
            }
            assert declared == required, op.name
