"""A request inside the engine: its tokens, how far its KV is computed, and its hints.

The scheduler works on one number per request, as vLLM's v1 core does: `num_computed_tokens`
against `num_tokens`. A prefill chunk, a decode step and a recompute after preemption are all
"compute the next tokens whose KV is missing".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch

from hetagent.backends.local.engine.batch import SamplingParams


@dataclass(frozen=True)
class Hints:
    """What the runtime tells the engine about the agent program a request belongs to."""

    program_id: str | None = None
    turn: int = 0
    last_turn: bool = False
    tool: str | None = None  # the tool the program runs after this turn
    tool_seconds: float | None = None  # predicted duration of that tool

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Hints:
        """Validate hints from an API body; raises ValueError naming the bad field."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ValueError("hetagent hints must be an object")
        unknown = set(data) - {"program_id", "turn", "last_turn", "tool", "tool_seconds"}
        if unknown:
            raise ValueError(f"unknown hetagent hint(s): {', '.join(sorted(unknown))}")
        program_id = data.get("program_id")
        if program_id is not None and not isinstance(program_id, str | int):
            raise ValueError("hetagent.program_id must be a string")
        turn = data.get("turn", 0)
        if isinstance(turn, bool) or not isinstance(turn, int) or turn < 0:
            raise ValueError("hetagent.turn must be an integer of 0 or more")
        last_turn = data.get("last_turn", False)
        if not isinstance(last_turn, bool):
            raise ValueError("hetagent.last_turn must be true or false")
        tool = data.get("tool")
        if tool is not None and not isinstance(tool, str):
            raise ValueError("hetagent.tool must be a string")
        seconds = data.get("tool_seconds")
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0
        ):
            raise ValueError("hetagent.tool_seconds must be a number of 0 or more")
        return cls(
            program_id=None if program_id is None else str(program_id),
            turn=turn,
            last_turn=last_turn,
            tool=tool,
            tool_seconds=None if seconds is None else float(seconds),
        )


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    hints: Hints
    arrival: float
    seq: int  # arrival order within the engine
    keep_kv: bool = False  # hold the KV after finishing until exported or released
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    status: Status = Status.WAITING
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    preempted: bool = False
    num_preemptions: int = 0
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at first admission
    num_forward_tokens: int = 0  # tokens this request pushed through the model (all steps)
    first_token_time: float | None = None
    finish_time: float | None = None
    generator: torch.Generator | None = None
    detokenizer: Any = None  # IncrementalDetokenizer
    guide: Any = None  # guidance.JsonGuide when the output must follow a JSON Schema
    text: str = ""
    # set by the engine for requests created from imported KV: the blocks already hold the KV
    imported_blocks: list[int] | None = None

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_new_tokens(self) -> int:
        """Tokens whose KV is still missing (1 while decoding)."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED


@dataclass(frozen=True)
class RequestOutput:
    """What one engine step produced for one request (a delta; `text` is new text only)."""

    request_id: str
    new_token_ids: list[int]
    text: str
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
    arrival: float
    first_token_time: float | None
