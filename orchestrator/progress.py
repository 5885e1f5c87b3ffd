"""`hetagent run`: one run on a backend (local by default), its steps live, then its outputs and
steps."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from hetagent.compiler.emit import ExecutablePlan
from hetagent.orchestrator.runtime import InputError, RunOptions, RunResult, Runtime
from hetagent.orchestrator.store import RunStore, Step, StoreError
from hetagent.orchestrator.telemetry import Telemetry

REFRESH_SECONDS = 0.25


async def run_with_progress(
    plan: ExecutablePlan,
    inputs: dict[str, Any],
    *,
    base_dir: Path,
    policies: dict[str, str],
    db: str | None,
    kv_memory_mb: float,
    as_json: bool,
    console: Console,
    fail: Callable[[str], BaseException],
    backend: str = "local",
    address: str | None = None,
) -> int:
    """Run the plan on `backend` (`hetagent.backends.make_backend`); 0 when the run
    succeeded, 1 when it failed."""
    from hetagent.backends import make_backend

    try:
        chosen = make_backend(backend, policies, kv_memory_mb=kv_memory_mb, address=address)
    except ValueError as error:
        raise fail(f"--backend {backend}: {error}") from None
    try:
        store = RunStore(db)
    except StoreError as error:
        raise fail(str(error)) from None
    runtime = Runtime(chosen, store, Telemetry())
    try:
        try:
            run_id = await runtime.submit(
                plan, inputs, RunOptions(base_dir=base_dir, policies=policies)
            )
        except InputError as error:
            raise fail(str(error)) from None
        task = runtime.tasks.get(run_id)
        live = console.is_terminal and not as_json
        with Live(console=console, transient=True, auto_refresh=False) as view:
            while task is not None and not task.done():
                if live:
                    view.update(_progress(store.steps(run_id)), refresh=True)
                await asyncio.wait({task}, timeout=REFRESH_SECONDS)
        result = await runtime.wait(run_id)
    finally:
        await runtime.close()
        runtime.telemetry.shutdown()
        store.close()
    if as_json:
        console.print_json(json.dumps(result_json(result)))
    else:
        console.print(_report(result))
    return 0 if result.status == "succeeded" else 1


def result_json(result: RunResult) -> dict[str, Any]:
    return {
        "run_id": result.run_id,
        "status": result.status,
        "outputs": result.outputs,
        "error": result.error,
        "trace_id": result.trace_id,
        "steps": [
            {
                "key": s.key,
                "kind": s.kind,
                "node": s.node,
                "pool": s.pool,
                "status": s.status,
                "attempt": s.attempt,
                "seconds": _seconds(s),
                "details": s.details,
            }
            for s in result.steps
        ],
    }


def _progress(steps: list[Step]) -> Table:
    table = Table(title="running", show_edge=False)
    for column in ("step", "pool", "state", "s"):
        table.add_column(column)
    for s in steps:
        seconds = _seconds(s)
        table.add_row(escape(s.key), s.pool or "", s.status, f"{seconds:.2f}" if seconds else "")
    return table


def _report(result: RunResult) -> Group:
    parts: list[Any] = []
    if result.outputs:
        for name, value in result.outputs.items():
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            parts.append(Text.assemble((f"{name}: ", "bold"), shown))
    steps = Table(title="steps", show_edge=False)
    for column in ("step", "pool", "s", "tokens in/out", "KV reused", "status"):
        steps.add_column(column)
    for s in result.steps:
        details = s.details or {}
        tokens = (
            f"{details['prompt_tokens']}/{details['output_tokens']}"
            if "prompt_tokens" in details
            else ""
        )
        reused = str(details.get("cached_tokens", "")) if "prompt_tokens" in details else ""
        seconds = _seconds(s)
        steps.add_row(
            escape(s.key),
            s.pool or "",
            f"{seconds:.2f}" if seconds is not None else "",
            tokens,
            reused,
            s.status + (f" (attempt {s.attempt})" if s.attempt > 1 else ""),
        )
    parts.append(steps)
    verdict = f"run {result.run_id} {result.status}"
    if result.error:
        verdict += f": {result.error}"
    if result.trace_id:
        verdict += f"; trace {result.trace_id}"
    parts.append(Text(verdict))
    return Group(*parts)


def _seconds(step: Step) -> float | None:
    return step.finished_at - step.started_at if step.finished_at else None
