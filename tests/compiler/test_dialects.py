"""Verifiers reject malformed ops with a message naming the op; the IRDL file matches the
dialects (op names, types, required attributes)."""

import re

import pytest
from xdsl.dialects.builtin import ModuleOp
from xdsl.irdl import OptAttributeDef
from xdsl.parser import Parser
from xdsl.utils.exceptions import ParseError, VerifyException

from hetagent.compiler.dialects import OUR_DIALECTS, agent, data, hw, kv, llm, make_context, tool

TEXT = agent.TextType()


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


@pytest.mark.parametrize(
    ("op", "message"),
    [
        (
            agent.LlmOp.make(
                result_types=[TEXT],
                id="a",
                node="a",
                model="m",
                input_tokens=5,
                output_tokens=9,
                max_tokens=8,
            ),
            "output_tokens exceeds max_tokens",
        ),
        (
            agent.LlmOp.make(
                result_types=[TEXT],
                id="a",
                node="a",
                model="m",
                input_tokens=0,
                output_tokens=1,
                max_tokens=8,
            ),
            "input_tokens must be >= 1",
        ),
        (
            agent.TransformOp.make(
                result_types=[agent.ValueType()], id="t", node="t", kind="template"
            ),
            "a template produces !agent.text",
        ),
        (
            agent.ToolOp.make(result_types=[agent.ValueType()], id="t", node="t", tools=[]),
            "tools is empty",
        ),
        (
            tool.ExecOp.make(
                result_types=[agent.ValueType()], id="t", node="t", tools=["shell"], cpu=-1.0
            ),
            "cpu must be positive",
        ),
        (
            data.ParseOp.make(result_types=[agent.ValueType()], id="p", node="p", format="xml"),
            "format must be one of json, regex, lines",
        ),
        (kv.LeaseOp.make([], [llm.kv_of("m")], id="l", node="l", model="n"), "of model 'm'"),
        (
            hw.PoolOp(
                attributes={
                    "sym_name": agent.StringAttr("p"),
                    "device": agent.StringAttr("h100"),
                    "count": agent.IntegerAttr(0, agent.i64),
                }
            ),
            "count must be >= 1",
        ),
    ],
    ids=[
        "llm-output",
        "llm-input",
        "transform-type",
        "tool-empty",
        "exec-cpu",
        "parse-format",
        "lease-model",
        "pool-count",
    ],
)
def test_verifiers_reject_malformed_ops(op, message):
    assert message in check(op)


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
