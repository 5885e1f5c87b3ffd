"""The tools an agent may call, each with a JSON Schema of its arguments for LLM tool calling.

A tool is a name, a description, a pydantic model of its arguments (the JSON Schema is derived
from it, so schema and validation never disagree) and a function that runs it in a `ToolContext`.
The registry holds the built-ins (`hetagent.tools.builtins`) and resolves user tools named
`module:function` on first use: the function's type hints (plain types or pydantic models) give
the schema, `@hetagent.tool` may add a description, and the call runs in a subprocess in the
sandbox (`hetagent.tools._runner`), under the same limits as `shell`.

`ToolRegistry.call` never raises for what a call did or was given: bad arguments, an escape
attempt, a crash or a timeout all come back as a `ToolResult` with `error` set, so one failing
call never takes down the agent.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from hetagent.tools.sandbox import CallLimits, PathEscape, Sandbox, SandboxError, ToolResult

log = logging.getLogger(__name__)

_REF = re.compile(r"^(?P<module>[A-Za-z_][\w.]*):(?P<function>[A-Za-z_]\w*)$")


class ToolError(ValueError):
    """A tool that cannot be found or loaded; the message is one line naming what to fix."""


@dataclass
class ToolContext:
    """What a call runs with: the run's sandbox, its limits, and where retrieval finds indexes."""

    sandbox: Sandbox
    limits: CallLimits = field(default_factory=CallLimits)
    # index name -> an open index (`hetagent.tools.vectorstore.VectorIndex`); None: look the
    # name up in the index store (HETAGENT_INDEXES).
    indexes: Callable[[str], Any] | None = None
    # A policy of `hetagent.policies.resources` (static, hint-static, broker) and the calls'
    # declared hints; without one, each call gets a plain resource group sized by `limits`.
    policy: Any = None
    hints: Any = None  # hetagent.spec.ResourceHints

    @property
    def lease_factory(self) -> Callable[..., Any] | None:
        """What `Sandbox.run` opens per call instead of a plain group: a lease of the policy
        (the broker may queue the call, at most for the call's time limit)."""
        if self.policy is None:
            return None
        policy, hints, timeout = self.policy, self.hints, self.limits.timeout_seconds
        return lambda call_id, _limits: policy.open(call_id, hints, timeout=timeout)


@dataclass(frozen=True)
class Tool:
    name: str  # "shell", "files.read", "mypackage.tools:lookup"
    description: str
    arguments: type[BaseModel]
    run: Callable[[ToolContext, BaseModel], ToolResult]

    @property
    def parameters(self) -> dict[str, Any]:
        """JSON Schema (draft 2020-12) of the arguments: the model that validates them."""
        schema = self.arguments.model_json_schema()
        schema.pop("title", None)
        return schema

    @property
    def function_name(self) -> str:
        """The name in an LLM's tool list: OpenAI-style names allow only [A-Za-z0-9_-]."""
        return function_name(self.name)

    def llm_spec(self) -> dict[str, Any]:
        """The tool as an OpenAI-compatible `tools` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.function_name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


def function_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name.replace(":", "__"))[:64]


class ToolRegistry:
    """Built-in tools plus user tools loaded by reference."""

    def __init__(self, tools: Iterable[Tool] | None = None):
        if tools is None:
            from hetagent.tools.builtins import builtin_tools

            tools = builtin_tools()
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise ToolError(f"tool {tool.name!r} is registered twice")
        self._tools[tool.name] = tool

    def names(self) -> list[str]:
        return sorted(self._tools)

    def get(self, name: str) -> Tool:
        """A registered tool, or a user tool `module:function` (imported on first use)."""
        tool = self._tools.get(name)
        if tool is None:
            by_function = {t.function_name: t for t in self._tools.values()}
            tool = by_function.get(name)
        if tool is None:
            if ":" not in name:
                known = ", ".join(self.names())
                raise ToolError(f"unknown tool {name!r}: use one of {known} or module:function")
            tool = user_tool(name)
            self._tools[name] = tool
        return tool

    def llm_specs(self, names: Iterable[str]) -> list[dict[str, Any]]:
        """The `tools` list for an LLM call offering these tools."""
        return [self.get(name).llm_spec() for name in names]

    def call(self, name: str, arguments: Mapping[str, Any] | str, ctx: ToolContext) -> ToolResult:
        """Run one call; every failure is in the result, never raised."""
        try:
            tool = self.get(name)
        except ToolError as exc:
            return ToolResult(tool=name, exit_code=None, error=str(exc))
        if isinstance(arguments, str):  # as an LLM sends them
            try:
                arguments = json.loads(arguments or "{}")
            except json.JSONDecodeError as exc:
                return _failed(tool.name, f"arguments are not valid JSON: {exc.msg}")
        if not isinstance(arguments, Mapping):
            return _failed(tool.name, "arguments must be a JSON object")
        try:
            parsed = tool.arguments.model_validate(dict(arguments))
        except ValidationError as exc:
            return _failed(tool.name, f"invalid arguments: {_first_error(exc)}")
        try:
            return tool.run(ctx, parsed)
        except (PathEscape, SandboxError, ToolError) as exc:
            return _failed(tool.name, str(exc))
        except OSError as exc:  # a missing file, a permission: the agent's to fix
            where = f": {exc.filename}" if exc.filename else ""
            return _failed(tool.name, f"{exc.strerror or exc}{where}")
        except Exception as exc:  # a bug in a tool must not end the agent: report it
            log.exception("tool %s failed", tool.name)
            return _failed(tool.name, f"{type(exc).__name__}: {exc}")


def _failed(tool: str, message: str) -> ToolResult:
    return ToolResult(tool=tool, exit_code=1, error=message)


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "(arguments)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


# ------------------------------------------------------------------------------------------
# User tools: module:function


def load_function(ref: str) -> Callable[..., Any]:
    """Import `module:function`; ToolError (one line) when it is not there."""
    match = _REF.match(ref)
    if not match:
        raise ToolError(f"tool reference {ref!r} must look like package.module:function")
    try:
        module = importlib.import_module(match["module"])
    except ImportError as exc:
        raise ToolError(f"tool {ref!r}: cannot import {match['module']!r} ({exc})") from None
    fn = getattr(module, match["function"], None)
    if not callable(fn):
        raise ToolError(f"tool {ref!r}: {match['module']} has no function {match['function']!r}")
    return fn


def arguments_model(fn: Callable[..., Any], name: str | None = None) -> type[BaseModel]:
    """A pydantic model of a function's parameters (unannotated ones take any JSON value)."""
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolError(f"tool {name or fn.__name__}: cannot take *args or **kwargs")
        annotation = Any if param.annotation is param.empty else param.annotation
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (annotation, default)
    return create_model(
        fn.__name__, __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=False), **fields
    )


def user_tool(ref: str) -> Tool:
    """A `module:function` tool; `@hetagent.tool` functions bring their own description.

    The schema is derived here from the signature, as `@hetagent.tool` derives it, but from a
    model that forbids unknown arguments, so the LLM's schema and the validation agree."""
    fn = load_function(ref)
    info = getattr(fn, "__hetagent_tool__", None)
    try:
        model = arguments_model(fn, ref)
        model.model_json_schema()
    except ToolError:
        raise
    except Exception as exc:  # a hint pydantic cannot turn into a schema
        raise ToolError(f"tool {ref!r}: its parameters have no JSON Schema ({exc})") from None
    description = (info.description if info is not None else None) or inspect.getdoc(fn) or ref

    def run(ctx: ToolContext, args: BaseModel) -> ToolResult:
        return run_python_function(ctx, ref, args.model_dump(mode="json"))

    return Tool(ref, description, model, run)


def _import_path() -> str:
    """This process's import path, so the runner finds the tool's module the same way."""
    entries = [os.getcwd() if entry == "" else entry for entry in sys.path]
    return os.pathsep.join(entry for entry in entries if os.path.isdir(entry))


def run_python_function(ctx: ToolContext, ref: str, arguments: dict[str, Any]) -> ToolResult:
    """Call `ref(**arguments)` in a sandboxed subprocess; its return value becomes `value`."""
    with ctx.sandbox.scratch() as private:  # writable by the call, outside its workspace
        out = Path(private) / "result.json"
        result = ctx.sandbox.run(
            [sys.executable, "-m", "hetagent.tools._runner", ref, str(out)],
            tool=ref,
            limits=ctx.limits,
            stdin=json.dumps(arguments).encode(),
            env={"PYTHONPATH": _import_path()},
            lease_factory=ctx.lease_factory,
        )
        try:
            reply = json.loads(out.read_text())
        except (OSError, ValueError):
            reply = None
    if reply is None:
        if result.error is None:
            result.error = f"{ref}: ended without a result (exit code {result.exit_code})"
        return result
    if "error" in reply:
        result.error = reply["error"]
    else:
        result.value = reply["value"]
        if not result.stdout:  # the agent reads the return value when nothing was printed
            value = reply["value"]
            result.stdout = value if isinstance(value, str) else json.dumps(value, indent=1)
    return result
