"""AgentGraph -> the `agent`-level module.

The graph becomes a `func.func` named after it: its inputs are the function's arguments, its
outputs what it returns. Each step becomes one `agent` op whose operands are what it depends on
(references and `dependsOn` alike), so fan-out stays parallel: independent steps share no edge.
An `agent` step (a ReAct loop) becomes an `scf.while`: the `before` region is one model turn and
decides whether to go on (`agent.continue`), the `after` region runs the chosen tool and appends
its observation. A `subgraph` step is a `func.call` of the referenced graph's function.

Token counts not given as hints are estimated here (about 4 characters a token, plus what the
referenced steps are expected to produce); the planner turns them into work.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import networkx as nx
from xdsl.dialects import arith, func, scf
from xdsl.dialects.builtin import ModuleOp, i1, i64
from xdsl.ir import Block, Region, SSAValue

from hetagent.compiler.dialects.agent import (
    TEXT,
    VALUE,
    ContinueOp,
    LlmOp,
    RetrieveOp,
    ToolOp,
    TransformOp,
)
from hetagent.compiler.dialects.base import to_attr
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
    memory_bytes,
    parse_references,
)

CHARS_PER_TOKEN = 4  # a common rule of thumb for English text with BPE tokenizers

# Discardable attributes on upstream ops (scf.while, func.func) that carry agent data.
LOOP_ATTRS = (
    "agent.id",
    "agent.node",
    "agent.max_turns",
    "agent.p95_turns",
    "agent.expected_turns",
)


class CompileError(ValueError):
    """The graph cannot be compiled (a user-fixable problem, e.g. an unresolved subgraph)."""


def build_module(graph: AgentGraph) -> ModuleOp:
    """The `agent`-level module of a graph (and of every subgraph it calls)."""
    functions: dict[str, func.FuncOp] = {}
    _FunctionBuilder(graph, "", functions).build()
    return ModuleOp(list(functions.values()))


def is_react_loop(op: object) -> bool:
    return isinstance(op, scf.WhileOp) and "agent.node" in op.attributes


@dataclass
class _FunctionBuilder:
    graph: AgentGraph
    prefix: str  # op ids of a subgraph's function start with "<function>/"
    functions: dict[str, func.FuncOp]
    values: dict[tuple[str, str], SSAValue] = field(default_factory=dict)  # (scope, name) -> value
    expected_tokens: dict[str, int] = field(default_factory=dict)  # node -> output tokens

    def build(self) -> str:
        name = self.graph.metadata.name
        spec = self.graph.spec
        arg_types = [TEXT if i.type == "string" else VALUE for i in spec.inputs.values()]
        block = Block(arg_types=arg_types)
        for input_name, arg in zip(spec.inputs, block.args, strict=True):
            self.values[("inputs", input_name)] = arg
        for node in self._topological_nodes():
            self._emit(block, node)
        outputs = [
            self._template(block, f"outputs.{key}", "outputs", [text])
            for key, text in spec.outputs.items()
        ]
        _add(block, func.ReturnOp(*outputs))
        function = func.FuncOp(
            name,
            (arg_types, [o.type for o in outputs]),
            Region(block),
            visibility="private" if self.prefix else None,
        )
        function.attributes["agent.inputs"] = to_attr(list(spec.inputs))
        function.attributes["agent.outputs"] = to_attr(list(spec.outputs))
        self.functions[name] = function
        return name

    def _topological_nodes(self):
        """Steps in dependency order; among ready steps, in the order the document lists them."""
        by_name = {node.name: node for node in self.graph.spec.nodes}
        order = {name: i for i, name in enumerate(by_name)}
        names = nx.lexicographical_topological_sort(self.graph.dag(), key=order.__getitem__)
        return [by_name[name] for name in names]

    def _id(self, *parts: str) -> str:
        return self.prefix + ".".join(parts)

    # -- operands and estimates ----------------------------------------------------------------

    def _operands(self, texts: Iterable[str], depends_on: Iterable[str] = ()) -> list[SSAValue]:
        """The values a step reads: referenced inputs and node outputs, then `dependsOn` nodes."""
        keys: dict[tuple[str, str], None] = {}
        for text in texts:
            for ref in parse_references(text):
                if isinstance(ref, Reference):
                    output = ref.output if ref.scope == "nodes" else None
                    keys[(ref.scope, ref.name if output is None else f"{ref.name}.{output}")] = None
        for dep in depends_on:
            if not any(scope == "nodes" and key.split(".")[0] == dep for scope, key in keys):
                keys[("nodes", f"{dep}.text")] = None
        return [self._value(scope, key) for scope, key in keys]

    def _value(self, scope: str, key: str) -> SSAValue:
        if scope == "inputs":
            return self.values[("inputs", key)]
        node = key.split(".", 1)[0]
        return self.values.get(("nodes", key)) or self.values[("nodes", f"{node}.*")]

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

    def _emit(self, block: Block, node) -> None:
        texts = [text for _, text in node.templated_fields()]
        operands = self._operands(texts, node.depends_on)
        op_id = self._id(node.name)
        model_of = {key: ref.id for key, ref in self.graph.spec.models.items()}
        if isinstance(node, LlmNode):
            output_tokens = node.expected_output_tokens or node.max_tokens
            op = _add(
                block,
                LlmOp.make(
                    inputs=operands,
                    result_types=[TEXT],
                    id=op_id,
                    node=node.name,
                    model=model_of[node.model],
                    input_tokens=node.expected_input_tokens or self._estimate_tokens(texts),
                    output_tokens=output_tokens,
                    max_tokens=node.max_tokens,
                ),
            )
            self.expected_tokens[node.name] = output_tokens
            self.values[("nodes", f"{node.name}.*")] = op.results[0]
        elif isinstance(node, ToolNode):
            op = _add(
                block,
                ToolOp.make(
                    inputs=operands,
                    result_types=[VALUE],
                    id=op_id,
                    node=node.name,
                    tools=[node.tool],
                    expected_seconds=node.expected_duration_seconds,
                    **_resources([node.resources]),
                ),
            )
            self.values[("nodes", f"{node.name}.*")] = op.results[0]
        elif isinstance(node, RetrieveNode):
            index = self.graph.spec.indexes[node.index]
            op = _add(
                block,
                RetrieveOp.make(
                    inputs=operands,
                    result_types=[VALUE],
                    id=op_id,
                    node=node.name,
                    index=node.index,
                    embedding_model=model_of[index.embedding_model],
                    k=node.k,
                    query_tokens=self._estimate_tokens([node.query]),
                ),
            )
            self.expected_tokens[node.name] = node.k * index.chunk_tokens
            self.values[("nodes", f"{node.name}.*")] = op.results[0]
        elif isinstance(node, TransformNode):
            if node.template is not None:
                op = _add(
                    block,
                    TransformOp.make(
                        inputs=operands,
                        result_types=[TEXT],
                        id=op_id,
                        node=node.name,
                        kind="template",
                    ),
                )
                self.expected_tokens[node.name] = self._estimate_tokens([node.template])
            else:
                op = _add(
                    block,
                    TransformOp.make(
                        inputs=operands,
                        result_types=[VALUE],
                        id=op_id,
                        node=node.name,
                        kind="parse",
                        format=node.parse.format,
                    ),
                )
            self.values[("nodes", f"{node.name}.*")] = op.results[0]
        elif isinstance(node, AgentNode):
            self._emit_loop(block, node, operands, model_of[node.model])
        else:
            assert isinstance(node, SubgraphNode)
            self._emit_call(block, node)

    def _emit_loop(
        self, block: Block, node: AgentNode, operands: list[SSAValue], model: str
    ) -> None:
        """A ReAct loop: (history, turn) -> one turn -> tool call -> (history', turn + 1)."""
        name = node.name
        prompt = _add(
            block,
            TransformOp.make(
                inputs=operands,
                result_types=[TEXT],
                id=self._id(name, "prompt"),
                node=name,
                kind="template",
            ),
        )
        zero = _add(block, arith.ConstantOp.from_int_and_width(0, i64))
        text, turn_type = TEXT, i64
        output_tokens = node.expected_output_tokens or node.max_tokens

        before = Block(arg_types=[text, turn_type])
        history, turn = before.args
        reply = _add(
            before,
            LlmOp.make(
                inputs=[history],
                result_types=[text],
                id=self._id(name, "turn"),
                node=name,
                model=model,
                input_tokens=node.expected_input_tokens
                or self._estimate_tokens([node.instructions, node.prompt]),
                output_tokens=output_tokens,
                max_tokens=node.max_tokens,
            ),
        ).results[0]
        more = _add(
            before,
            ContinueOp.make(
                [reply, turn],
                [i1],
                id=self._id(name, "continue"),
                node=name,
                max_turns=node.max_turns,
            ),
        ).results[0]
        _add(before, scf.ConditionOp(more, reply, turn, history))

        after = Block(arg_types=[text, turn_type, text])
        reply_in, turn_in, history_in = after.args
        seconds = node.expected_tool_seconds
        observation = _add(
            after,
            ToolOp.make(
                inputs=[reply_in],
                result_types=[VALUE],
                id=self._id(name, "tool"),
                node=name,
                tools=node.tools,
                expected_seconds=sum(seconds.values()) / len(seconds) if seconds else None,
                **_resources([node.resources, *node.tool_resources.values()]),
            ),
        ).results[0]
        next_history = _add(
            after,
            TransformOp.make(
                inputs=[history_in, reply_in, observation],
                result_types=[text],
                id=self._id(name, "observe"),
                node=name,
                kind="template",
            ),
        ).results[0]
        one = _add(after, arith.ConstantOp.from_int_and_width(1, i64))
        next_turn = _add(after, arith.AddiOp(turn_in, one)).result
        _add(after, scf.YieldOp(next_history, next_turn))

        loop = _add(
            block,
            scf.WhileOp(
                [prompt.results[0], zero.result], [text, turn_type, text], [before], [after]
            ),
        )
        loop_data = {
            "agent.id": self._id(name),
            "agent.node": name,
            "agent.max_turns": node.max_turns,
            "agent.p95_turns": node.p95_turns or node.max_turns,
            "agent.expected_turns": float(node.expected_turns or node.p95_turns or node.max_turns),
        }
        loop.attributes.update({key: to_attr(value) for key, value in loop_data.items()})
        self.values[("nodes", f"{name}.text")] = loop.results[0]
        self.values[("nodes", f"{name}.turns")] = loop.results[1]
        self.values[("nodes", f"{name}.*")] = loop.results[0]
        self.expected_tokens[name] = output_tokens

    def _emit_call(self, block: Block, node: SubgraphNode) -> None:
        child = self.graph.subgraphs.get(node.name)
        if child is None:
            raise CompileError(
                f"subgraph node {node.name!r}: its file {node.ref!r} is not loaded; "
                "load the graph with hetagent.load(path) so subgraphs resolve"
            )
        callee = child.metadata.name
        if callee not in self.functions:
            _FunctionBuilder(child, f"{callee}/", self.functions).build()
        arguments = []
        for key, declared in child.spec.inputs.items():
            value = node.inputs.get(key, declared.default)
            text = value if isinstance(value, str) else ""
            arguments.append(
                self._template(
                    block,
                    self._id(node.name, "input", key),
                    node.name,
                    [text],
                    depends_on=node.depends_on,
                )
            )
        function = self.functions[callee]
        call = _add(block, func.CallOp(callee, arguments, function.function_type.outputs.data))
        call.attributes["agent.id"] = to_attr(self._id(node.name))
        call.attributes["agent.node"] = to_attr(node.name)
        for key, result in zip(child.spec.outputs, call.results, strict=True):
            self.values[("nodes", f"{node.name}.{key}")] = result
        if call.results:
            self.values[("nodes", f"{node.name}.*")] = call.results[0]

    def _template(
        self, block: Block, op_id: str, node: str, texts: list[str], depends_on=()
    ) -> SSAValue:
        """A value for a template: the referenced value itself when it is exactly one reference."""
        text = texts[0]
        refs = list(parse_references(text))
        if (
            len(refs) == 1
            and isinstance(refs[0], Reference)
            and not refs[0].field_path
            and text.strip() == _placeholder(refs[0])
            and not depends_on
        ):
            return self._operands([text])[0]
        op = _add(
            block,
            TransformOp.make(
                inputs=self._operands(texts, depends_on),
                result_types=[TEXT],
                id=op_id,
                node=node,
                kind="template",
            ),
        )
        return op.results[0]


def _add(block: Block, op):
    """Append an op to a block and return it (cheaper than a Builder for whole graphs)."""
    block.add_op(op)
    return op


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


__all__ = ["LOOP_ATTRS", "CompileError", "build_module", "is_react_loop"]
