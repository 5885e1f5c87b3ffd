"""What a ReAct turn's model reply means: a tool call, a final answer, or a mistake.

A turn's reply is one JSON object, `{"tool": NAME, "arguments": {...}}` or `{"answer": TEXT}`.
`action_schema` is the JSON Schema the engine constrains decoding to, built from the tools' own
argument schemas, so even a small model emits well-formed calls; `parse_reply` still checks
everything, because a reply cut off at max_tokens (or from an unconstrained engine) can be
anything. A mistake becomes an observation the model sees next turn, never a crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator


@dataclass(frozen=True)
class ToolAction:
    tool: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Answer:
    text: str


@dataclass(frozen=True)
class Mistake:
    """A reply that is neither: `error` tells the model what to fix."""

    error: str


Action = ToolAction | Answer | Mistake


def action_schema(
    tools: dict[str, dict[str, Any]], max_answer_chars: int | None = None
) -> dict[str, Any]:
    """A reply: one of the tools with its arguments (tool name -> arguments' JSON Schema), or
    the answer (at most `max_answer_chars`, so a reply that rambles still closes its JSON
    before the turn's max_tokens)."""
    calls = [
        {
            "type": "object",
            "properties": {"tool": {"const": name}, "arguments": schema},
            "required": ["tool", "arguments"],
            "additionalProperties": False,
        }
        for name, schema in tools.items()
    ]
    answer = {
        "type": "object",
        "properties": {
            "answer": {"type": "string"}
            | ({"maxLength": max_answer_chars} if max_answer_chars else {})
        },
        "required": ["answer"],
        "additionalProperties": False,
    }
    return {"anyOf": [*calls, answer]}


def parse_reply(text: str, tools: dict[str, dict[str, Any]]) -> Action:
    """The action a reply asks for. A reply with no JSON object at all is taken as the answer
    (an unconstrained model that just answers); broken JSON or a bad call is a `Mistake`."""
    stripped = text.strip()
    start = stripped.find("{")
    if start < 0:
        return Answer(stripped) if stripped else Mistake("the reply was empty")
    try:
        reply, _ = json.JSONDecoder().raw_decode(stripped[start:])
    except json.JSONDecodeError as error:
        return Mistake(f"the reply is not valid JSON ({error.msg} at character {error.pos})")
    if not isinstance(reply, dict):
        return Mistake("the reply must be a JSON object")
    if "answer" in reply and "tool" not in reply:
        answer = reply["answer"]
        return Answer(answer if isinstance(answer, str) else json.dumps(answer))
    tool = reply.get("tool")
    if not isinstance(tool, str):
        return Mistake('give {"tool": NAME, "arguments": {...}} or {"answer": TEXT}')
    if tool not in tools:
        known = ", ".join(sorted(tools))
        return Mistake(f"there is no tool {tool!r}; the tools are {known}")
    arguments = reply.get("arguments", {})
    if not isinstance(arguments, dict):
        return Mistake(f"the arguments of {tool} must be a JSON object")
    problems = sorted(Draft202012Validator(tools[tool]).iter_errors(arguments), key=str)
    if problems:
        where = "/".join(str(p) for p in problems[0].absolute_path) or "arguments"
        return Mistake(f"bad arguments for {tool}: {where}: {problems[0].message}")
    return ToolAction(tool, arguments)


def describe_tools(tools: dict[str, dict[str, Any]], descriptions: dict[str, str]) -> str:
    """The tool list and the reply format, for the loop's system prompt."""
    lines = ["Reply with one JSON object and nothing else. To use a tool:"]
    lines.append('{"tool": NAME, "arguments": {...}}')
    for name, schema in tools.items():
        summary = descriptions.get(name, "")
        lines.append(f"- {name}: {summary} arguments: {json.dumps(schema.get('properties', {}))}")
    lines.append('When you know the answer: {"answer": TEXT}')
    if "python" in tools:  # small models follow an example better than a description
        lines.append(
            'For example, to compute: {"tool": "python", "arguments": {"code": "print(6 * 7)"}}'
        )
    return "\n".join(lines)
