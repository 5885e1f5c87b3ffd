"""AgentGraph -> the `agent`-level module.

The graph becomes a `func.func` named after it: its inputs are the function's arguments, its
outputs what it returns. Each step becomes one `agent` op whose operands are what it depends on
(references and `dependsOn` alike), so fan-out stays parallel: independent steps share no edge.
An `agent` step (a ReAct loop) becomes an `scf.while`: the `before` region is one model turn and
decides whether to go on (`agent.continue`), the `after` region runs the chosen tool and appends
its observation. A `subgraph` step is inlined: its steps join the graph under ids prefixed with
the step's name (`research/write`), so placement and transfers see one dataflow graph.

Every op that provides a step's output is marked (`agent.provides`), and every op that renders a
template names it (`template`: the document path of the text), so the plan can bind them.
Token counts not given as hints are estimated here (about 4 characters a token, plus what the
referenced steps are expected to produce); the planner turns them into work.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
from xdsl.dialects import arith, func, scf
from xdsl.dialects.builtin import ModuleOp, i1, i64
from xdsl.ir import Block, Operation, Region, SSAValue

from hetagent.compiler.dialects.agent import (
    LOOP_EXPECTED_TURNS,
    LOOP_ID,
    LOOP_MAX_TURNS,
    LOOP_NODE,
    LOOP_P95_TURNS,
    PROVIDES,
    TEXT,
    VALUE,
    ContinueOp,
    LlmOp,
    RetrieveOp,
    ToolOp,
    TransformOp,
)
from hetagent.compiler.dialects.base import to_attr
from hetagent.compiler.errors import CompileError
from hetagent.spec import (
    AgentGraph,
    AgentNode,
    LlmNode,
    Reference,
    ResourceHints,
    RetrieveNode,
    SubgraphNode,
    ToolNode,
    TransformNode,
    cpu_cores,
    format_path,
    memory_bytes,
    parse_references,
)

CHARS_PER_TOKEN = 4  # a common rule of thumb for English text with BPE tokenizers
SUBGRAPH_SEPARATOR = "/"  # node names cannot contain it, so prefixed ids never collide


def build_module(graph: AgentGraph) -> ModuleOp:
    """The `agent`-level module of a graph (subgraphs inlined)."""
    spec = graph.spec
    block = Block(arg_types=[_input_type(declared.type) for declared in spec.inputs.values()])
    builder = _GraphBuilder(
        graph, "", block, values=dict(zip(spec.inputs, block.args, strict=True))
    )
    outputs = builder.emit_graph()
    block.add_op(func.ReturnOp(*outputs.values()))
    function = func.FuncOp(
        graph.metadata.name,
        (list(block.arg_types), [o.type for o in outputs.values()]),
        Region(block),
    )
    function.attributes["agent.inputs"] = to_attr(list(spec.inputs))
    function.attributes["agent.outputs"] = to_attr(list(outputs))
    return ModuleOp([function])


def _input_type(declared: str):
    return TEXT if declared == "string" else VALUE


def _add(block: Block, op: Operation) -> Operation:
    """Append an op to a block and return it (cheaper than a Builder for whole graphs)."""
    block.add_op(op)
    return op


def _provide(op: Operation, *keys: tuple[str, int]) -> None:
    """Mark `op` as providing references (`nodes.a.outputs.text`) with its result `index`."""
    existing = op.attributes.get(PROVIDES)
    entries = [] if existing is None else [e.data for e in existing.data]
    op.attributes[PROVIDES] = to_attr(entries + [f"{key}={index}" for key, index in keys])


@dataclass
class _GraphBuilder:
    """Emits one graph's steps into `block`; a subgraph gets its own builder on the same block."""

    graph: AgentGraph
    prefix: str  # "" for the top graph, "research/" for the steps of subgraph node `research`
    block: Block
    values: dict[str, SSAValue]  # input name -> value
    after: list[SSAValue] = field(default_factory=list)  # the subgraph step's `dependsOn`
    outputs_of: dict[str, dict[str, SSAValue]] = field(default_factory=dict)  # node -> output
    expected_tokens: dict[str, int] = field(default_factory=dict)  # node -> output tokens

    def __post_init__(self) -> None:
        self.model_ids = {key: ref.id for key, ref in self.graph.spec.models.items()}

    def emit_graph(self) -> dict[str, SSAValue]:
        """Emit every step, then return the graph's outputs by name."""
        for index, node in self._topological_nodes():
            self._emit(index, node)
        return {
            key: self._template(f"output:{key}", "", ("spec", "outputs", key), text)
            for key, text in self.graph.spec.outputs.items()
        }

    def _topological_nodes(self) -> list[tuple[int, Any]]:
        """Steps in dependency order; among ready steps, in the order the document lists them."""
        nodes = self.graph.spec.nodes
        order = {node.name: i for i, node in enumerate(nodes)}
        names = nx.lexicographical_topological_sort(self.graph.dag(), key=order.__getitem__)
        return [(order[name], nodes[order[name]]) for name in names]

    def _id(self, *parts: str) -> str:
        return self.prefix + ".".join(part for part in parts if part)

    def _node(self, name: str) -> str:
        return self.prefix + name

    def _template_path(self, loc: tuple) -> str:
        """Where a template's text is: the document (by subgraph prefix) and the path in it."""
        return self.prefix + format_path(loc)

    # -- operands and estimates ----------------------------------------------------------------

    def _operands(self, texts: Iterable[str], depends_on: Iterable[str] = ()) -> list[SSAValue]:
        """What a step reads: referenced inputs and node outputs, then its `dependsOn` steps;
        a step that reads nothing waits for what the enclosing subgraph step depends on."""
        found: dict[int, SSAValue] = {}
        for text in texts:
            for ref in parse_references(text):
                if isinstance(ref, Reference):
                    value = self._reference(ref)
                    found.setdefault(id(value), value)
        for dep in depends_on:
            if not any(self._reads_node(value, dep) for value in found.values()):
                for value in self._completion(dep):
                    found.setdefault(id(value), value)
        return list(found.values()) or list(self.after)

    def _reference(self, ref: Reference) -> SSAValue:
        if ref.scope == "inputs":
            return self.values[ref.name]
        outputs = self.outputs_of[ref.name]
        return outputs.get(ref.output) or outputs["*"]

    def _reads_node(self, value: SSAValue, node: str) -> bool:
        return any(v is value for v in self.outputs_of.get(node, {}).values())

    def _completion(self, node: str) -> list[SSAValue]:
        """Values that exist once a step has finished: its result, or (a subgraph without
        outputs) the results of all its steps."""
        outputs = self.outputs_of[node]
        return [outputs["*"]] if "*" in outputs else list(outputs.values())

    def _estimate_tokens(self, texts: Iterable[str]) -> int:
        """Prompt tokens: the literal text plus the referenced steps' expected output."""
        total = 0
        for text in texts:
            total += len(text) // CHARS_PER_TOKEN
            for ref in parse_references(text):
                if isinstance(ref, Reference) and ref.scope == "nodes":
                    total += self.expected_tokens.get(ref.name, 0)
        return max(total, 1)

    # -- one step ----------------------------------------------------------------------------

    def _emit(self, index: int, node) -> None:
        if isinstance(node, SubgraphNode):
            self._emit_subgraph(index, node)  # reads its inputs through its own templates
            return
        texts = [text for _, text in node.templated_fields()]
        inputs = self._operands(texts, node.depends_on)
        common = {"id": self._id(node.name), "node": self._node(node.name)}
        model_of = self.model_ids
        reference = f"nodes.{self._node(node.name)}.outputs"
        if isinstance(node, LlmNode):
            output_tokens = node.expected_output_tokens or node.max_tokens
            op = _add(
                self.block,
                LlmOp.make(
                    [TEXT],
                    inputs=inputs,
                    model=model_of[node.model],
                    input_tokens=node.expected_input_tokens or self._estimate_tokens(texts),
                    output_tokens=output_tokens,
                    max_tokens=node.max_tokens,
                    **common,
                ),
            )
            self.expected_tokens[node.name] = output_tokens
        elif isinstance(node, ToolNode):
            op = _add(
                self.block,
                ToolOp.make(
                    [VALUE],
                    inputs=inputs,
                    tools=[node.tool],
                    expected_seconds=node.expected_duration_seconds,
                    **_resources([node.resources]),
                    **common,
                ),
            )
        elif isinstance(node, RetrieveNode):
            index_spec = self.graph.spec.indexes[node.index]
            op = _add(
                self.block,
                RetrieveOp.make(
                    [VALUE],
                    inputs=inputs,
                    index=node.index,
                    embedding_model=model_of[index_spec.embedding_model],
                    k=node.k,
                    query_tokens=self._estimate_tokens([node.query]),
                    **common,
                ),
            )
            self.expected_tokens[node.name] = node.k * index_spec.chunk_tokens
        elif isinstance(node, TransformNode):
            location = ("spec", "nodes", index, "template" if node.parse is None else "parse")
            if node.parse is None:
                op = _add(
                    self.block,
                    TransformOp.make(
                        [TEXT],
                        inputs=inputs,
                        kind="template",
                        template=self._template_path(location),
                        **common,
                    ),
                )
                self.expected_tokens[node.name] = self._estimate_tokens([node.template])
            else:
                op = _add(
                    self.block,
                    TransformOp.make(
                        [VALUE],
                        inputs=inputs,
                        kind="parse",
                        format=node.parse.format,
                        pattern=node.parse.pattern,
                        template=self._template_path(location),
                        **common,
                    ),
                )
        elif isinstance(node, AgentNode):
            self._emit_loop(index, node, inputs, model_of[node.model])
            return
        _provide(op, *((f"{reference}.{output}", 0) for output in sorted(node.outputs)))
        self.outputs_of[node.name] = {"*": op.results[0]}

    def _emit_loop(self, index: int, node: AgentNode, inputs: list[SSAValue], model: str) -> None:
        """A ReAct loop over (history, turn): one model turn; if it calls a tool and turns
        remain, run the tool, append the observation, and go on with turn + 1. `turn` counts
        model turns from 1, so the loop's `turns` output is how many turns it took."""
        name, block = node.name, self.block
        common = {"node": self._node(name)}
        prompt = _add(
            block,
            TransformOp.make(
                [TEXT],
                inputs=inputs,
                kind="template",
                id=self._id(name, "prompt"),
                template=self._template_path(("spec", "nodes", index, "prompt")),
                **common,
            ),
        )
        first_turn = _add(block, arith.ConstantOp.from_int_and_width(1, i64))
        output_tokens = node.expected_output_tokens or node.max_tokens

        before = Block(arg_types=[TEXT, i64])
        history, turn = before.args
        reply = _add(
            before,
            LlmOp.make(
                [TEXT],
                inputs=[history],
                id=self._id(name, "turn"),
                model=model,
                input_tokens=node.expected_input_tokens
                or self._estimate_tokens([node.instructions, node.prompt]),
                output_tokens=output_tokens,
                max_tokens=node.max_tokens,
                **common,
            ),
        ).results[0]
        more = _add(
            before,
            ContinueOp.make(
                [reply, turn],
                [i1],
                id=self._id(name, "continue"),
                max_turns=node.max_turns,
                **common,
            ),
        ).results[0]
        before.add_op(scf.ConditionOp(more, reply, turn, history))

        after = Block(arg_types=[TEXT, i64, TEXT])
        reply_in, turn_in, history_in = after.args
        seconds = node.expected_tool_seconds
        observation = _add(
            after,
            ToolOp.make(
                [VALUE],
                inputs=[reply_in],
                id=self._id(name, "tool"),
                tools=node.tools,
                expected_seconds=sum(seconds.values()) / len(seconds) if seconds else None,
                **_resources([node.resources, *node.tool_resources.values()]),
                **common,
            ),
        ).results[0]
        next_history = _add(
            after,
            TransformOp.make(
                [TEXT],
                inputs=[history_in, reply_in, observation],
                id=self._id(name, "observe"),
                kind="template",
                template="observation",
                **common,
            ),
        ).results[0]
        one = _add(after, arith.ConstantOp.from_int_and_width(1, i64))
        after.add_op(scf.YieldOp(next_history, _add(after, arith.AddiOp(turn_in, one)).result))

        loop = _add(
            block,
            scf.WhileOp(
                [prompt.results[0], first_turn.result], [TEXT, i64, TEXT], [before], [after]
            ),
        )
        loop_data = {
            LOOP_ID: self._id(name),
            LOOP_NODE: self._node(name),
            LOOP_MAX_TURNS: node.max_turns,
            LOOP_P95_TURNS: node.p95_turns or node.max_turns,
            LOOP_EXPECTED_TURNS: float(node.expected_turns or node.p95_turns or node.max_turns),
        }
        loop.attributes.update({key: to_attr(value) for key, value in loop_data.items()})
        reference = f"nodes.{self._node(name)}.outputs"
        _provide(loop, (f"{reference}.text", 0), (f"{reference}.turns", 1))
        self.outputs_of[name] = {
            "*": loop.results[0],
            "text": loop.results[0],
            "turns": loop.results[1],
        }
        self.expected_tokens[name] = output_tokens

    def _emit_subgraph(self, index: int, node: SubgraphNode) -> None:
        """Inline the referenced graph: its inputs are rendered from this step's `inputs`."""
        child = self.graph.subgraphs.get(node.name)
        if child is None:
            raise CompileError(
                f"subgraph node {node.name!r}: its file {node.ref!r} is not loaded; "
                "load the graph with hetagent.load(path) so subgraphs resolve"
            )
        prefix = self._node(node.name) + SUBGRAPH_SEPARATOR
        after = self._operands([], node.depends_on) if node.depends_on else list(self.after)
        child_inputs = {}
        for key, declared in child.spec.inputs.items():
            value = node.inputs.get(key, declared.default)
            child_inputs[key] = self._argument(
                node.name, index, key, value, _input_type(declared.type), after
            )
        builder = _GraphBuilder(child, prefix, self.block, child_inputs, after=after)
        outputs = builder.emit_graph()
        reference = f"nodes.{self._node(node.name)}.outputs"
        for key, value in outputs.items():
            _provide(value.owner, (f"{reference}.{key}", value.index))
        if outputs:
            self.outputs_of[node.name] = {"*": next(iter(outputs.values()))} | outputs
        else:
            steps = builder.outputs_of.values()
            self.outputs_of[node.name] = {
                f"step{i}": value for i, value in enumerate(v for o in steps for v in o.values())
            }

    def _argument(
        self, name: str, index: int, key: str, value: Any, kind, after: list[SSAValue]
    ) -> SSAValue:
        """A subgraph input's value, rendered from the step's `inputs` entry (text, or JSON
        parsed into a value), waiting for what the step depends on."""
        location = ("spec", "nodes", index, "inputs", key)
        texts = [text for _, text in _strings(value)]
        op = _add(
            self.block,
            TransformOp.make(
                [kind],
                inputs=self._operands(texts) if texts else after,
                kind="template" if kind is TEXT else "parse",
                format=None if kind is TEXT else "json",
                id=self._id(name, "input", key),
                node=self._node(name),
                template=self._template_path(location),
            ),
        )
        return op.results[0]

    def _template(self, op_id: str, node: str, location: tuple, text: str) -> SSAValue:
        """A value for a graph output: the referenced value itself when it is exactly one
        reference (of the top graph: a subgraph's outputs get their own op, which provides
        the subgraph step's output), else a rendered template."""
        refs = list(parse_references(text))
        if (
            not self.prefix
            and len(refs) == 1
            and isinstance(refs[0], Reference)
            and not refs[0].field_path
            and text.strip() == _placeholder(refs[0])
        ):
            return self._reference(refs[0])
        op = _add(
            self.block,
            TransformOp.make(
                [TEXT],
                inputs=self._operands([text]),
                kind="template",
                id=self._id(op_id),
                node=self._node(node) if node else self.prefix.rstrip(SUBGRAPH_SEPARATOR),
                template=self._template_path(location),
            ),
        )
        return op.results[0]


def _strings(value: Any) -> Iterable[tuple[tuple, str]]:
    """Every string in a (nested) value; a subgraph input may be a list or mapping."""
    if isinstance(value, str):
        yield (), value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _placeholder(ref: Reference) -> str:
    if ref.scope == "inputs":
        return "${inputs." + ref.name + "}"
    return "${nodes." + ref.name + ".outputs." + str(ref.output) + "}"


def _resources(hints: list[ResourceHints | None]) -> dict[str, int | float | None]:
    """The largest memory and CPU hint among the given ones (a loop's tools share one op)."""
    memories = [memory_bytes(h.memory) for h in hints if h is not None and h.memory is not None]
    cpus = [cpu_cores(h.cpu) for h in hints if h is not None and h.cpu is not None]
    return {
        "memory_bytes": max(memories) if memories else None,
        "cpu": max(cpus) if cpus else None,
    }


__all__ = ["CompileError", "build_module"]
