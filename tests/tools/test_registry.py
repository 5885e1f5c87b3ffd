"""Every tool publishes a valid JSON Schema; user tools `module:function` run in the sandbox."""

import json
import re
import textwrap

import jsonschema
import pytest

from hetagent.tools.registry import ToolError, ToolRegistry

BUILTINS = [
    "files.list",
    "files.read",
    "files.search",
    "files.write",
    "python",
    "retrieve",
    "shell",
]

USER_TOOLS = '''
import os

from pydantic import BaseModel

import hetagent


class Point(BaseModel):
    x: float
    y: float


@hetagent.tool
def norm(p: Point, scale: float = 1.0) -> float:
    """Length of the vector p, times scale."""
    return (p.x ** 2 + p.y ** 2) ** 0.5 * scale


def where(tag: str) -> dict:
    """Where the tool ran and what it saw."""
    return {"cwd": os.getcwd(), "tag": tag, "secret": os.environ.get("HETAGENT_TEST_SECRET")}


def crash(n: int) -> int:
    raise RuntimeError(f"boom {n}")


def chatty(n: int) -> list[int]:
    print("working")
    return list(range(n))
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of user tools importable as `hetagent_test_user_tools`."""
    package = tmp_path / "usercode"
    package.mkdir()
    (package / "hetagent_test_user_tools.py").write_text(textwrap.dedent(USER_TOOLS))
    monkeypatch.syspath_prepend(str(package))
    return "hetagent_test_user_tools"


def test_builtins_are_registered(registry):
    assert registry.names() == BUILTINS


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_schema_is_valid_json_schema(registry, name):
    schema = registry.get(name).parameters
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object" and schema["properties"]
    assert all(prop.get("description") for prop in schema["properties"].values())
    assert schema.get("additionalProperties") is False


def test_schema_accepts_good_arguments_and_rejects_bad_ones(registry):
    validator = jsonschema.Draft202012Validator(registry.get("files.read").parameters)
    assert validator.is_valid({"path": "a.txt", "start_line": 3})
    assert not validator.is_valid({"start_line": 3})  # path missing
    assert not validator.is_valid({"path": "a.txt", "start_line": 0})
    assert not validator.is_valid({"path": "a.txt", "mode": "rb"})


def test_llm_specs_have_openai_compatible_unique_names(registry):
    specs = registry.llm_specs(BUILTINS)
    names = [spec["function"]["name"] for spec in specs]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name) for name in names)
    assert registry.get("files_read").name == "files.read"  # an LLM answers with this name


def test_bad_arguments_come_back_as_a_one_line_error(registry, ctx):
    result = registry.call("files.read", {"path": "a.txt", "start_line": "first"}, ctx)
    assert not result.ok and "start_line" in result.error and "\n" not in result.error
    assert "path: Field required" in registry.call("files.read", {}, ctx).error
    assert "not valid JSON" in registry.call("shell", "{command: ls", ctx).error


def test_arguments_as_an_llm_sends_them_are_accepted(registry, ctx):
    assert registry.call("shell", json.dumps({"command": "echo hi"}), ctx).stdout == "hi\n"


def test_unknown_tool_names_the_known_ones(registry, ctx):
    result = registry.call("sh", {}, ctx)
    assert "unknown tool 'sh'" in result.error and "shell" in result.error


def test_user_tool_schema_comes_from_type_hints_and_pydantic(registry, user_module):
    tool = registry.get(f"{user_module}:norm")
    assert tool.description == "Length of the vector p, times scale."
    schema = tool.parameters
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["required"] == ["p"]
    assert jsonschema.Draft202012Validator(schema).is_valid({"p": {"x": 1, "y": 2}})
    assert not jsonschema.Draft202012Validator(schema).is_valid({"p": {"x": "far"}})


def test_user_tool_runs_in_the_sandbox_and_returns_its_value(
    registry, ctx, user_module, workspace, monkeypatch
):
    monkeypatch.setenv("HETAGENT_TEST_SECRET", "s3cr3t")
    result = registry.call(f"{user_module}:norm", {"p": {"x": 3, "y": 4}, "scale": 2}, ctx)
    assert result.ok and result.value == 10.0 and result.stdout == "10.0"
    seen = registry.call(f"{user_module}:where", {"tag": "t"}, ctx).value
    assert seen == {"cwd": str(workspace.resolve()), "tag": "t", "secret": None}


def test_user_tool_keeps_what_it_printed(registry, ctx, user_module):
    result = registry.call(f"{user_module}:chatty", {"n": 3}, ctx)
    assert result.value == [0, 1, 2] and result.stdout == "working\n"


def test_user_tool_that_raises_reports_the_error_and_the_caller_survives(
    registry, ctx, user_module
):
    result = registry.call(f"{user_module}:crash", {"n": 7}, ctx)
    assert not result.ok
    assert result.error == f"{user_module}:crash: RuntimeError: boom 7"
    assert "Traceback" in result.stderr
    assert registry.call(f"{user_module}:norm", {"p": {"x": 0, "y": 1}}, ctx).value == 1.0


def test_user_tool_arguments_are_validated_before_anything_runs(registry, ctx, user_module):
    result = registry.call(f"{user_module}:norm", {"p": {"x": 3}}, ctx)
    assert result.error == "invalid arguments: p.y: Field required"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("no_such_module_xyz:fn", "cannot import 'no_such_module_xyz'"),
        ("json:no_such_function", "has no function 'no_such_function'"),
        ("not a ref:", "must look like package.module:function"),
    ],
)
def test_unloadable_user_tool_is_a_one_line_error(ref, message):
    with pytest.raises(ToolError, match=re.escape(message)):
        ToolRegistry().get(ref)


def test_user_tool_with_var_kwargs_is_refused(user_module, tmp_path, monkeypatch):
    (tmp_path / "hetagent_test_varargs.py").write_text("def f(**kw):\n    return kw\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ToolError, match="cannot take"):
        ToolRegistry().get("hetagent_test_varargs:f")
