"""lower-agent-to-ops: each `agent` step becomes the granular operators that run it."""

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import scf
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier,
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)

from hetagent.compiler.dialects import data, kv, llm, retr, tool
from hetagent.compiler.dialects.agent import (
    LOOP_ID,
    PROVIDES,
    LlmOp,
    RetrieveOp,
    ToolOp,
    TransformOp,
    is_react_loop,
)
from hetagent.compiler.dialects.base import HetOp


def _carried(op: HetOp, suffix: str, *keys: str) -> dict[str, object]:
    """The attributes a lowered op keeps from the step it lowers (as they are), with its own id."""
    attributes = op.attributes
    own = {"id": f"{attributes['id'].data}.{suffix}", "node": attributes["node"]}
    return own | {key: attributes[key] for key in keys if key in attributes}


def lower_llm_call(
    op: LlmOp, prefix: SSAValue | None
) -> tuple[list[Operation], SSAValue, SSAValue]:
    """tokenize -> prefill (extending `prefix`) -> decode -> detokenize: (ops, text, kv)."""
    model = op.attr("model")
    tokens, cache = llm.tokens_of(model), llm.kv_of(model)
    tokenize = llm.TokenizeOp.make(
        [tokens], inputs=op.inputs, tokens=op.input_tokens, **_carried(op, "tokenize", "model")
    )
    prefill = llm.PrefillOp.make(
        [tokenize.results[0], prefix],
        [cache],
        tokens=op.input_tokens,
        **_carried(op, "prefill", "model"),
    )
    decode = llm.DecodeOp.make(
        [prefill.results[0]],
        [tokens, cache],
        tokens=op.output_tokens,
        **_carried(op, "decode", "model", "max_tokens"),
    )
    detokenize = llm.DetokenizeOp.make(
        [decode.results[0]], [op.text.type], **_carried(op, "detokenize", "model")
    )
    return [tokenize, prefill, decode, detokenize], detokenize.results[0], decode.results[1]


def replace_step(
    rewriter: PatternRewriter, op: Operation, ops: list[Operation], result: SSAValue
) -> None:
    """Replace a step by its operators; the op that now holds its result provides its outputs."""
    if PROVIDES in op.attributes:
        result.owner.attributes[PROVIDES] = op.attributes[PROVIDES]
    rewriter.replace(op, ops, [result])


class LowerLlm(RewritePattern):
    """Lowers `agent.llm` to tokenize -> prefill -> decode -> detokenize, then frees its KV."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: LlmOp, rewriter: PatternRewriter) -> None:
        if is_react_loop(op.parent_op()):
            return  # a turn of a ReAct loop: LowerReactLoop lowers it with the loop's lease
        ops, text, cache = lower_llm_call(op, prefix=None)
        release = kv.ReleaseOp.make([cache], **_carried(op, "release", "model"))
        replace_step(rewriter, op, [*ops, release], text)


class LowerReactLoop(RewritePattern):
    """Lowers a ReAct loop's turns onto one KV lease, carried across its tool calls."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: scf.WhileOp, rewriter: PatternRewriter) -> None:
        if not is_react_loop(op) or any(isinstance(t, llm.KVType) for t in op.result_types):
            return
        before, after = op.before_region.block, op.after_region.block
        turn = next(o for o in before.ops if isinstance(o, LlmOp))
        model, loop_id, node = turn.attr("model"), op.attributes[LOOP_ID].data, turn.node
        cache_type = llm.kv_of(model)
        lease = kv.LeaseOp.make([], [cache_type], id=f"{loop_id}.lease", node=node, model=model)

        prefix = before.insert_arg(cache_type, len(before.args))
        ops, text, cache = lower_llm_call(turn, prefix)
        rewriter.replace(turn, ops, [text])
        condition = before.last_op
        condition.operands = [*condition.operands, cache]
        held = after.insert_arg(cache_type, len(after.args))
        yield_op = after.last_op
        yield_op.operands = [*yield_op.operands, held]

        before_region, after_region = op.regions
        loop = scf.WhileOp(
            [*op.operands, lease.results[0]],
            [*op.result_types, cache_type],
            op.detach_region(before_region),
            op.detach_region(after_region),
        )
        loop.attributes.update(op.attributes)
        release = kv.ReleaseOp.make(
            [loop.results[-1]], id=f"{loop_id}.release", node=node, model=model
        )
        rewriter.replace(op, [lease, loop, release], loop.results[:-1])


class LowerTool(RewritePattern):
    """Lowers `agent.tool` to `tool.exec`."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ToolOp, rewriter: PatternRewriter) -> None:
        keys = ("tools", "expected_seconds", "memory_bytes", "cpu")
        exec_op = tool.ExecOp.make(
            [op.result.type], inputs=op.inputs, **_carried(op, "exec", *keys)
        )
        replace_step(rewriter, op, [exec_op], exec_op.results[0])


class LowerRetrieve(RewritePattern):
    """Lowers `agent.retrieve` to embed -> search."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: RetrieveOp, rewriter: PatternRewriter) -> None:
        model = op.attr("embedding_model")
        embed = retr.EmbedOp.make(
            [retr.embedding_of(model)],
            inputs=op.inputs,
            model=model,
            tokens=op.query_tokens,
            **_carried(op, "embed"),
        )
        search = retr.SearchOp.make(
            [embed.results[0]], [op.result.type], **_carried(op, "search", "index", "k")
        )
        replace_step(rewriter, op, [embed, search], search.results[0])


class LowerTransform(RewritePattern):
    """Lowers `agent.transform` to `data.template` or `data.parse`."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: TransformOp, rewriter: PatternRewriter) -> None:
        if op.attr("kind") == "template":
            new = data.TemplateOp.make(
                [op.result.type], inputs=op.inputs, **_carried(op, "template", "template")
            )
        else:
            new = data.ParseOp.make(
                [op.result.type],
                inputs=op.inputs,
                **_carried(op, "parse", "format", "pattern", "template"),
            )
        replace_step(rewriter, op, [new], new.results[0])


@dataclass(frozen=True)
class LowerAgentToOps(ModulePass):
    """Lowers the `agent` dialect's steps to `llm`, `kv`, `retr`, `tool` and `data` operators."""

    name = "lower-agent-to-ops"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        patterns = [LowerReactLoop(), LowerLlm(), LowerTool(), LowerRetrieve(), LowerTransform()]
        # One sweep suffices: no pattern creates ops another pattern rewrites.
        walker = PatternRewriteWalker(
            GreedyRewritePatternApplier(patterns), apply_recursively=False
        )
        walker.rewrite_module(op)
