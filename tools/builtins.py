"""The built-in tools: `shell`, `python`, `files.read/write/list/search` and `retrieve`.

`shell` and `python` run a process in the run's sandbox (its own session, scrubbed environment,
time limit, resource group, no network where the kernel allows). The `files.*` tools run in the
agent's process but only through `Sandbox.resolve`/`Sandbox.open_file`, so a path that leads out
of the workspace (`..`, an absolute path elsewhere, a symlink out) is refused. `retrieve` searches
a vector index (`hetagent.tools.vectorstore`).
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import sys
import time
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from hetagent.tools.registry import Tool, ToolContext, ToolError
from hetagent.tools.sandbox import CallLimits, PathEscape, ToolResult

MAX_READ_BYTES = 1 << 20  # files.read stops here; the output limit then trims what is shown
MAX_SEARCH_FILE_BYTES = 4 << 20  # files.search skips larger files (logs, data)


class Arguments(BaseModel):
    model_config = ConfigDict(extra="forbid")


Timeout = Annotated[
    float | None,
    Field(gt=0, description="Seconds before the command is killed (at most the call's limit)."),
]


def _limits(ctx: ToolContext, timeout: float | None) -> CallLimits:
    if timeout is None or timeout >= ctx.limits.timeout_seconds:
        return ctx.limits
    return CallLimits(**{**ctx.limits.__dict__, "timeout_seconds": timeout})


# ------------------------------------------------------------------------------------------
# shell and python


class ShellArgs(Arguments):
    command: str = Field(description="A bash command line, run from the workspace root.")
    timeout_seconds: Timeout = None


def run_shell(ctx: ToolContext, args: ShellArgs) -> ToolResult:
    return ctx.sandbox.run(
        ["/bin/bash", "--noprofile", "--norc", "-c", args.command],
        tool="shell",
        limits=_limits(ctx, args.timeout_seconds),
        lease_factory=ctx.lease_factory,
    )


class PythonArgs(Arguments):
    code: str = Field(description="A Python 3 program; print what you want to see.")
    timeout_seconds: Timeout = None


def run_python(ctx: ToolContext, args: PythonArgs) -> ToolResult:
    # The code arrives on stdin (no argv size limit); `-` keeps the workspace importable.
    return ctx.sandbox.run(
        [sys.executable, "-s", "-"],
        tool="python",
        limits=_limits(ctx, args.timeout_seconds),
        stdin=args.code.encode(),
        lease_factory=ctx.lease_factory,
    )


# ------------------------------------------------------------------------------------------
# files.*


def _done(tool: str, text: str, value: object, started: float, ctx: ToolContext) -> ToolResult:
    from hetagent.tools.sandbox import truncate

    shown, cut = truncate(text.encode(), ctx.limits.output_bytes)
    return ToolResult(
        tool=tool,
        stdout=shown,
        truncated=cut,
        value=value,
        duration_seconds=time.monotonic() - started,
    )


class ReadArgs(Arguments):
    path: str = Field(description="File path, relative to the workspace root.")
    start_line: int = Field(1, ge=1, description="First line to return (1-based).")
    max_lines: int = Field(2000, ge=1, le=100_000, description="Most lines to return.")


def files_read(ctx: ToolContext, args: ReadArgs) -> ToolResult:
    started = time.monotonic()
    fd = ctx.sandbox.open_file(args.path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ToolError(f"{args.path!r} is not a regular file")
        data = f.read(MAX_READ_BYTES + 1)
    if b"\x00" in data[:8192]:
        return ToolResult(tool="files.read", exit_code=1, error=f"{args.path!r} is a binary file")
    lines = data[:MAX_READ_BYTES].decode("utf-8", "replace").splitlines(keepends=True)
    chosen = lines[args.start_line - 1 : args.start_line - 1 + args.max_lines]
    text = "".join(chosen)
    more = len(data) > MAX_READ_BYTES or args.start_line - 1 + args.max_lines < len(lines)
    if more:
        text += f"\n[... file continues after line {args.start_line - 1 + len(chosen)} ...]\n"
    value = {"path": args.path, "start_line": args.start_line, "lines": len(chosen)}
    return _done("files.read", text, value, started, ctx)


class WriteArgs(Arguments):
    path: str = Field(description="File path, relative to the workspace root.")
    content: str = Field(description="The text to write.")
    append: bool = Field(False, description="Append instead of replacing the file.")


def files_write(ctx: ToolContext, args: WriteArgs) -> ToolResult:
    started = time.monotonic()
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if args.append else os.O_TRUNC)
    data = args.content.encode()
    with os.fdopen(ctx.sandbox.open_file(args.path, flags), "wb") as f:
        f.write(data)
    text = f"wrote {len(data)} bytes to {args.path}"
    return _done("files.write", text, {"path": args.path, "bytes": len(data)}, started, ctx)


class ListArgs(Arguments):
    path: str = Field(".", description="Directory, relative to the workspace root.")
    recursive: bool = Field(False, description="Descend into subdirectories.")
    max_entries: int = Field(500, ge=1, le=100_000, description="Most entries to list.")


def _walk(root: str, recursive: bool):
    """(relative path, lstat) of the entries under root; symlinks are listed, never followed."""
    stack = [""]
    while stack:
        prefix = stack.pop()
        try:
            entries = sorted(os.scandir(os.path.join(root, prefix)), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            rel = os.path.join(prefix, entry.name)
            info = entry.stat(follow_symlinks=False)
            yield rel, info
            if recursive and stat.S_ISDIR(info.st_mode):
                stack.append(rel)


def files_list(ctx: ToolContext, args: ListArgs) -> ToolResult:
    started = time.monotonic()
    directory = ctx.sandbox.resolve(args.path)
    if not directory.is_dir():
        raise ToolError(f"{args.path!r} is not a directory in the workspace")
    entries, lines = [], []
    for rel, info in _walk(str(directory), args.recursive):
        if len(entries) == args.max_entries:
            lines.append(f"[... more than {args.max_entries} entries ...]")
            break
        kind = (
            "dir"
            if stat.S_ISDIR(info.st_mode)
            else "link"
            if stat.S_ISLNK(info.st_mode)
            else "file"
        )
        entries.append({"path": rel, "type": kind, "size": info.st_size})
        lines.append(
            f"{rel}/" if kind == "dir" else f"{rel}{' -> (link)' if kind == 'link' else ''}"
        )
    value = {"path": args.path, "entries": entries}
    return _done("files.list", "\n".join(lines), value, started, ctx)


class SearchArgs(Arguments):
    pattern: str = Field(description="A regular expression (Python syntax) to find in lines.")
    path: str = Field(".", description="Directory or file to search, relative to the workspace.")
    glob: str | None = Field(None, description="Only files whose name matches, e.g. '*.py'.")
    ignore_case: bool = Field(False, description="Match letters in either case.")
    max_matches: int = Field(200, ge=1, le=10_000, description="Stop after this many matches.")


def files_search(ctx: ToolContext, args: SearchArgs) -> ToolResult:
    started = time.monotonic()
    try:
        regex = re.compile(args.pattern, re.IGNORECASE if args.ignore_case else 0)
    except re.error as exc:
        return ToolResult(tool="files.search", exit_code=1, error=f"bad pattern: {exc}")
    base = ctx.sandbox.resolve(args.path)
    if base.is_file():
        candidates = [(base.name, base.lstat())]
        top = str(base.parent)
    else:
        candidates, top = _walk(str(base), recursive=True), str(base)
    matches, lines = [], []
    for rel, info in candidates:
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_SEARCH_FILE_BYTES:
            continue
        if args.glob and not fnmatch.fnmatch(os.path.basename(rel), args.glob):
            continue
        try:
            shown = ctx.sandbox.relative(ctx.sandbox.resolve(os.path.join(top, rel)))
            fd = ctx.sandbox.open_file(shown, os.O_RDONLY)
        except (PathEscape, OSError):
            continue
        with os.fdopen(fd, "rb") as f:
            data = f.read()
        if b"\x00" in data[:8192]:
            continue
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if regex.search(line):
                matches.append({"path": shown, "line": number, "text": line[:500]})
                lines.append(f"{shown}:{number}: {line[:500]}")
                if len(matches) == args.max_matches:
                    break
        if len(matches) == args.max_matches:
            lines.append(f"[... stopped at {args.max_matches} matches ...]")
            break
    text = "\n".join(lines) if lines else "no matches"
    return _done("files.search", text, {"matches": matches}, started, ctx)


# ------------------------------------------------------------------------------------------
# retrieve


class RetrieveArgs(Arguments):
    query: str = Field(description="What to look for, in natural language.")
    index: str = Field(description="The name of the index to search.")
    k: int = Field(4, ge=1, le=100, description="How many passages to return.")


def retrieve(ctx: ToolContext, args: RetrieveArgs) -> ToolResult:
    from hetagent.tools import vectorstore

    started = time.monotonic()
    try:
        index = ctx.indexes(args.index) if ctx.indexes else vectorstore.open_index(args.index)
        hits = index.query(args.query, k=args.k)
    except (vectorstore.VectorIndexError, KeyError) as exc:
        raise ToolError(f"no index {args.index!r} for this agent ({exc})") from None
    value = [hit.as_dict() for hit in hits]
    return _done("retrieve", vectorstore.format_hits(hits), value, started, ctx)


def builtin_tools() -> list[Tool]:
    return [
        Tool(
            "shell",
            "Run a bash command in the workspace; returns exit code and output.",
            ShellArgs,
            run_shell,
        ),
        Tool(
            "python",
            "Run a Python program in a fresh interpreter in the workspace.",
            PythonArgs,
            run_python,
        ),
        Tool(
            "files.read",
            "Read a text file of the workspace (a range of lines).",
            ReadArgs,
            files_read,
        ),
        Tool(
            "files.write",
            "Write (or append to) a text file of the workspace.",
            WriteArgs,
            files_write,
        ),
        Tool("files.list", "List a directory of the workspace.", ListArgs, files_list),
        Tool(
            "files.search",
            "Find lines matching a regular expression in workspace files.",
            SearchArgs,
            files_search,
        ),
        Tool(
            "retrieve",
            "Search a document index for passages relevant to a query.",
            RetrieveArgs,
            retrieve,
        ),
    ]
