"""Where every tool call runs: a workspace per run, a scrubbed environment, bounded resources.

A `Sandbox` owns one run's working directory. `Sandbox.run(argv, limits)` starts a process in it
and returns a structured `ToolResult`; it never raises for what the tool did (a crash, a timeout,
a signal), only for a call that cannot start (`SandboxError`, one line).

What a call gets, and how each part is made real on Linux:

- **Working directory**: the run's workspace. `Sandbox.resolve` maps a path argument into it and
  rejects `..`, absolute paths outside it and symlinks that lead out (`PathEscape`); `open_file`
  then opens the resolved path component by component with `O_NOFOLLOW`, so a symlink swapped in
  after the check is refused too. This confines the `files.*` tools.
- **Host file systems**: read-only for a process of the call (a private mount namespace in which
  every mount but the workspace, the call's HOME/TMPDIR and /dev/shm is remounted read-only), so
  a shell command cannot change files, cgroups or kernel settings outside its workspace. It can
  still read what the agent's user may read (there is no chroot). Not root: inside a user
  namespace. `filesystem_isolation()` probes once; where it fails the result's events say so.
- **Environment**: built from nothing: PATH, a HOME and TMPDIR private to the sandbox (outside the
  workspace, removed by `cleanup()`), a UTF-8 locale, the thread-count variables, plus names the
  caller allows explicitly. Secrets in the agent's environment never reach a tool.
- **Time limit**: the call runs in its own session; at the limit the whole process group, every
  descendant still found under it and the resource group are killed, and the result says so.
  Background processes left behind by a call that exited are killed as well. A process that
  double-forked out of its session (reparented to init) is reached only through a cgroup.
- **Network**: a fresh network namespace (only a downed loopback) when the kernel allows it:
  `unshare(CLONE_NEWNET)` as root, `CLONE_NEWUSER | CLONE_NEWNET` otherwise. `network_isolation()`
  probes once and says why when it is not available; calls then run with the host's network.
- **pids**: the resource controller's pids limit (cgroup `pids.max`) where it has one; otherwise
  RLIMIT_NPROC, which the kernel applies per user and ignores for root, so a root agent on a host
  without a pids controller cannot bound it (the result's events say so).
- **CPU grant**: the call is pinned (`sched_setaffinity`) to ceil(cpus) CPUs, so `nproc` and
  `len(os.sched_getaffinity(0))` tell the truth, and OMP_NUM_THREADS and its friends match.
- **Memory, CPU quota**: the resource group from `hetagent.tools.resources` (cgroup v2, v1 or the
  rlimit+poll fallback), joined between fork and exec; its peak memory and events are reported.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import math
import os
import re
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from hetagent.tools import resources as res

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
_DRAIN_SECONDS = 2.0  # after the call ended: pipes still held by an escaped process are cut here
_call_ids = itertools.count()
_cpu_offset = itertools.count()


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: prctl in preexec
_PR_SET_PDEATHSIG = 1


class SandboxError(Exception):
    """A call that cannot start (bad workspace, bad limits); the message is one line."""


class PathEscape(SandboxError):
    """A path argument that leads outside the workspace."""


@dataclass(frozen=True)
class CallLimits:
    """What one tool call may use. `None` means unbounded (pids and output always have one)."""

    timeout_seconds: float = 30.0
    cpus: float = 1.0
    memory_bytes: int | None = None
    pids: int = 256
    output_bytes: int = 64 * 1024  # per stream, kept as head + tail around a marker

    @classmethod
    def from_node(cls, hints: Any = None, timeout_seconds: float | None = None) -> CallLimits:
        """The limits a spec node declares: its `resources` hints and `timeoutSeconds`."""
        from hetagent.spec import cpu_cores, memory_bytes

        options: dict[str, Any] = {}
        if timeout_seconds is not None:
            options["timeout_seconds"] = timeout_seconds
        if hints is not None and hints.memory is not None:
            options["memory_bytes"] = memory_bytes(hints.memory)
        if hints is not None and hints.cpu is not None:
            options["cpus"] = cpu_cores(hints.cpu)
        return cls(**options)

    def __post_init__(self) -> None:
        if not self.timeout_seconds > 0:
            raise SandboxError(f"timeout_seconds must be > 0, got {self.timeout_seconds}")
        if not self.cpus > 0:
            raise SandboxError(f"cpus must be > 0, got {self.cpus}")
        if self.pids < 1 or self.output_bytes < 64:
            raise SandboxError("pids must be >= 1 and output_bytes >= 64")


@dataclass
class ToolResult:
    """What a tool call produced, shaped for the agent (`text`) and for the runtime (the rest)."""

    tool: str
    exit_code: int | None = 0  # None when a signal ended the process
    signal: str | None = None  # e.g. "SIGSEGV", "SIGKILL"
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False  # stdout or stderr lost its middle to the output limit
    timed_out: bool = False
    duration_seconds: float = 0.0
    peak_memory_bytes: int | None = None
    cpu_seconds: float | None = None
    events: list[str] = field(default_factory=list)  # resource and sandbox events, one line each
    value: Any = None  # the structured result of files.*, retrieve and Python tools
    error: str | None = None  # why the call failed, one line (bad arguments, escape, crash)

    @property
    def ok(self) -> bool:
        return self.error is None and self.exit_code == 0 and not self.timed_out

    @property
    def text(self) -> str:
        """The result as the agent reads it."""
        if self.error and not (self.stdout or self.stderr):  # "[OOM] ..." reads as it is
            return self.error if self.error.startswith("[") else f"[error] {self.error}"
        parts = [self.stdout.rstrip("\n")] if self.stdout else []
        if self.stderr:
            parts.append("[stderr]\n" + self.stderr.rstrip("\n"))
        if self.timed_out:
            parts.append(f"[timeout] {self.error}")
        elif self.signal:
            parts.append(f"[killed by {self.signal}]")
        elif self.exit_code:
            parts.append(f"[exit code {self.exit_code}]")
        return "\n".join(parts)

    def outputs(self) -> dict[str, Any]:
        """The outputs a `tool` node exposes (`${nodes.X.outputs.stdout}` and friends)."""
        return {
            "text": self.text,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "exitCode": self.exit_code,
            "value": self.value,
        }


def truncate(data: bytes, limit: int) -> tuple[str, bool]:
    """Decode `data`, keeping its head and tail around a marker when it exceeds `limit` bytes."""
    if len(data) <= limit:
        return data.decode("utf-8", "replace"), False
    head, tail = data[: limit // 2], data[len(data) - limit // 2 :]
    marker = f"\n[... {len(data) - len(head) - len(tail)} bytes truncated ...]\n"
    return head.decode("utf-8", "replace") + marker + tail.decode("utf-8", "replace"), True


class _Capped:
    """A stream's bytes as head + tail, counting what fell between (so huge output is cheap)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit // 2 - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            del self.tail[: max(0, len(self.tail) - self.limit // 2)]

    def text(self) -> tuple[str, bool]:
        dropped = self.total - len(self.head) - len(self.tail)
        if dropped <= 0:
            return bytes(self.head + self.tail).decode("utf-8", "replace"), False
        marker = f"\n[... {dropped} bytes truncated ...]\n"
        head = bytes(self.head).decode("utf-8", "replace")
        return head + marker + bytes(self.tail).decode("utf-8", "replace"), True


# ------------------------------------------------------------------------------------------
# Kernel facilities, probed once


_libc = ctypes.CDLL(None, use_errno=True)

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 0x1, 0x2, 0x4, 0x8, 0x20
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 0x400, 0x800, 0x1000, 0x4000
MS_PRIVATE, MS_RELATIME = 0x40000, 0x200000
# Per-mount flags a read-only remount must repeat (the kernel refuses to drop locked ones).
_KEPT_MOUNT_FLAGS = {
    b"nosuid": MS_NOSUID,
    b"nodev": MS_NODEV,
    b"noexec": MS_NOEXEC,
    b"noatime": MS_NOATIME,
    b"nodiratime": MS_NODIRATIME,
    b"relatime": MS_RELATIME,
}
_ALWAYS_WRITABLE = (b"/dev/shm", b"/dev/pts")  # POSIX semaphores, terminals


def _mount(source: bytes | None, target: bytes, flags: int) -> None:
    if _libc.mount(source, target, None, flags, None) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target.decode(errors='replace')}")


def _isolate(network: bool, writable: tuple[bytes, ...] | None) -> None:
    """In the child: new namespaces for the call. A network namespace (only a downed loopback)
    if `network`; a mount namespace with the host read-only but `writable` if that is given.
    Not root: inside a new user namespace that maps our own ids (files keep their owner)."""
    flags = (CLONE_NEWNET if network else 0) | (CLONE_NEWNS if writable is not None else 0)
    if not flags:
        return
    uid, gid = os.geteuid(), os.getegid()
    if uid != 0:
        flags |= CLONE_NEWUSER
    if _libc.unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), f"unshare({flags:#x})")
    if uid != 0:  # setgroups must be denied before an unprivileged gid_map
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", f"{uid} {uid} 1"),
            ("gid_map", f"{gid} {gid} 1"),
        ):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    if writable is not None:
        _read_only_mounts(writable)


def _read_only_mounts(writable: tuple[bytes, ...]) -> None:
    """In a private mount namespace: every mount read-only except the `writable` directories
    (bound onto themselves first) and /dev/shm, /dev/pts."""
    _mount(None, b"/", MS_REC | MS_PRIVATE)  # nothing we do here reaches the host
    for path in writable:
        _mount(path, path, MS_BIND | MS_REC)
    with open("/proc/self/mountinfo", "rb") as f:
        mounts = [line.split() for line in f.read().splitlines()]
    keep = (*writable, *_ALWAYS_WRITABLE)
    for fields in mounts:
        target = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), fields[4])
        if any(target == path or target.startswith(path + b"/") for path in keep):
            continue
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY
        for option in fields[5].split(b","):
            flags |= _KEPT_MOUNT_FLAGS.get(option, 0)
        _mount(None, target, flags)
    os.chdir(os.getcwd())  # the working directory was entered before: enter it on the new mount


@cache
def filesystem_isolation() -> tuple[bool, str]:
    """Whether calls see the host's file systems read-only (all but their workspace) here."""
    with tempfile.TemporaryDirectory(prefix="hetagent-probe-") as scratch:
        path = os.path.realpath(scratch)
        try:
            probe = subprocess.run(
                ["/bin/sh", "-c", f"test ! -w / && test -w '{path}'"],
                preexec_fn=lambda: _isolate(False, (path.encode(),)),
                capture_output=True,
                timeout=10,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            return False, f"host file systems stay writable: no mount namespace ({exc})"
    if probe.returncode != 0:
        return False, f"host file systems stay writable (probe exited {probe.returncode})"
    return True, "mount namespace per call: host file systems read-only, the workspace writable"


@cache
def network_isolation() -> tuple[bool, str]:
    """Whether calls get their own network namespace here, and why (not)."""
    try:
        probe = subprocess.run(
            ["/bin/true"],
            preexec_fn=lambda: _isolate(True, None),
            capture_output=True,
            timeout=10,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return False, f"no network namespace ({exc}); tools use the host's network"
    if probe.returncode != 0:
        return False, f"no network namespace (probe exited {probe.returncode})"
    how = "CLONE_NEWNET" if os.geteuid() == 0 else "CLONE_NEWUSER|CLONE_NEWNET"
    return True, f"network namespace per call ({how}): loopback only, down"


@cache
def controller() -> res.Controller:
    """The resource controller of this process (cgroup v2, v1 or the fallback)."""
    return res.detect_controller()


@cache
def nproc_enforced() -> bool:
    """Whether the kernel applies RLIMIT_NPROC to our calls: never to the host's root (also
    when seen through a user namespace), nor with CAP_SYS_RESOURCE/CAP_SYS_ADMIN on the host."""
    euid = os.geteuid()
    try:
        lines = Path("/proc/self/uid_map").read_text().split("\n")
        caps = int(Path("/proc/self/status").read_text().split("CapEff:")[1].split()[0], 16)
    except (OSError, IndexError, ValueError):
        return euid != 0
    for line in filter(None, lines):
        inner, outer, count = map(int, line.split())
        if inner <= euid < inner + count:
            host_uid = outer + euid - inner
            init_namespace = (inner, outer, count) == (0, 0, 4294967295)
            privileged = init_namespace and caps & ((1 << 24) | (1 << 21))
            return host_uid != 0 and not privileged
    return True


def _processes_of_uid(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                count += entry.stat().st_uid == uid
    return count


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), so a timeout reaches those that left its group."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _granted_cpus(cpus: float) -> set[int]:
    """ceil(cpus) of the CPUs this process may use, rotating so concurrent calls spread out."""
    allowed = sorted(os.sched_getaffinity(0))
    count = min(len(allowed), max(1, math.ceil(cpus)))
    start = next(_cpu_offset) % len(allowed)
    return {allowed[(start + i) % len(allowed)] for i in range(count)}


# ------------------------------------------------------------------------------------------
# The sandbox


_SAFE_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Sandbox:
    """One run's workspace and the way every tool call of that run is started in it."""

    def __init__(
        self,
        workspace: str | os.PathLike[str],
        *,
        env_allow: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        network: bool = False,
        read_only_host: bool = True,
        writable: Sequence[str | os.PathLike[str]] = (),
        resource_controller: res.Controller | None = None,
    ):
        """`env_allow`: names copied from this process's environment (nothing else is);
        `env`: extra variables for every call; `network=True` keeps the host's network;
        `read_only_host=False` lets calls write outside the workspace; `writable`: more
        directories calls may write besides the workspace."""
        root = Path(workspace)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SandboxError(f"cannot create workspace {root}: {exc.strerror}") from None
        self.root = root.resolve()
        self.env_allow = tuple(env_allow)
        self.extra_env = dict(env or {})
        for name in (*self.env_allow, *self.extra_env):
            if not _SAFE_ENV_NAME.match(name):
                raise SandboxError(f"not an environment variable name: {name!r}")
        self.network = network
        self.read_only_host = read_only_host
        self.writable = tuple(Path(p).resolve() for p in writable)
        for path in self.writable:
            if not path.is_dir():
                raise SandboxError(f"writable directory {path} does not exist")
        self._controller = resource_controller
        self._owned_temp = False
        # HOME and TMPDIR of the calls: private to the run but outside the workspace, so the
        # workspace holds only what the tools wrote there.
        self._private = Path(tempfile.mkdtemp(prefix="hetagent-sandbox-"))

    @classmethod
    def for_run(cls, run_id: str, **options: Any) -> Sandbox:
        """The lasting workspace of a run, under HETAGENT_WORKSPACES (default
        ~/.local/share/hetagent/workspaces), so a resumed run finds its files again."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", run_id):
            raise SandboxError(f"run id {run_id!r} must be letters, digits, '_', '.', '-'")
        default = Path.home() / ".local/share/hetagent/workspaces"
        return cls(Path(os.environ.get("HETAGENT_WORKSPACES") or default) / run_id, **options)

    @classmethod
    def temporary(cls, run_id: str = "run", **options: Any) -> Sandbox:
        """A sandbox in a fresh temporary workspace, removed by `cleanup()`."""
        sandbox = cls(tempfile.mkdtemp(prefix=f"hetagent-{run_id}-"), **options)
        sandbox._owned_temp = True
        return sandbox

    def scratch(self) -> tempfile.TemporaryDirectory[str]:
        """A directory private to one call, outside the workspace, writable by the call."""
        return tempfile.TemporaryDirectory(prefix="call-", dir=self._private)

    def cleanup(self) -> None:
        shutil.rmtree(self._private, ignore_errors=True)
        if self._owned_temp:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    @property
    def controller(self) -> res.Controller:
        if self._controller is None:
            self._controller = controller()
        return self._controller

    # -- paths ----------------------------------------------------------------------------

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """The absolute path inside the workspace that `path` names; `PathEscape` if it leads
        out (by `..`, an absolute path elsewhere, or a symlink anywhere along it)."""
        text = os.fspath(path)
        if "\x00" in text:
            raise PathEscape(f"path {text!r} contains a NUL byte")
        candidate = Path(text) if os.path.isabs(text) else self.root / text
        resolved = Path(os.path.realpath(candidate))
        if resolved != self.root and self.root not in resolved.parents:
            raise PathEscape(f"path {text!r} is outside the workspace")
        return resolved

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() or "."

    def open_file(self, path: str | os.PathLike[str], flags: int, mode: int = 0o644) -> int:
        """Open a workspace file; each component is opened with O_NOFOLLOW beneath the root,
        so a symlink planted after `resolve` cannot redirect the open."""
        resolved = self.resolve(path)
        parts = resolved.relative_to(self.root).parts
        if not parts:
            raise PathEscape(f"path {os.fspath(path)!r} is the workspace itself, not a file")
        directory = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in parts[:-1]:
                if flags & os.O_CREAT:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, dir_fd=directory)
                step = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
                os.close(directory)
                directory = step
            return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=directory)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise PathEscape(f"path {os.fspath(path)!r} changed under the call") from None
            raise
        finally:
            os.close(directory)

    # -- environment ------------------------------------------------------------------------

    def environment(self, cpus: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The whole environment of a call: nothing from this process unless allowed."""
        home = self._private / "home"
        tmp = self._private / "tmp"
        home.mkdir(exist_ok=True)
        tmp.mkdir(exist_ok=True)
        python_bin = os.path.dirname(sys.executable)
        env = {
            "PATH": f"{python_bin}:{DEFAULT_PATH}",
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
        }
        env.update(res.thread_env(cpus))
        for name in self.env_allow:
            if name in os.environ:
                env[name] = os.environ[name]
        env.update(self.extra_env)
        env.update(extra or {})
        return env

    # -- running ----------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        tool: str,
        limits: CallLimits | None = None,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        call_id: str | None = None,
        lease_factory: Callable[[str, res.Limits], Any] | None = None,
    ) -> ToolResult:
        """Run `argv` in the workspace under `limits`; the result says how it ended.

        `lease_factory(call_id, limits)` replaces the controller's `create` (a broker lease from
        `hetagent.policies.resources`); whatever it returns needs preexec/started/close."""
        limits = limits or CallLimits()
        call_id = call_id or f"{re.sub(r'[^A-Za-z0-9_.-]', '-', tool)}-{next(_call_ids)}"
        workdir = self.resolve(cwd) if cwd else self.root
        result = ToolResult(tool=tool)
        group_limits = res.Limits(
            memory_max=limits.memory_bytes, cpu_cores=limits.cpus, pids=limits.pids
        )
        try:
            group = (lease_factory or self.controller.create)(call_id, group_limits)
        except res.ResourceError as exc:
            raise SandboxError(str(exc)) from None
        # A policy's lease may grant other CPUs than asked: pin and size threads to its grant.
        granted = getattr(getattr(group, "limits", None), "cpu_cores", None) or limits.cpus
        cpus = _granted_cpus(granted)
        features = getattr(self.controller, "features", frozenset())
        nproc_limit = None
        if "pids" not in features:
            if not nproc_enforced():
                result.events.append(
                    f"pids not bounded: {self.controller.name} has no pids controller and "
                    "RLIMIT_NPROC does not apply to root"
                )
            else:  # per user: allow what the user runs already plus this call's share
                nproc_limit = _processes_of_uid(os.geteuid()) + limits.pids
        isolate = not self.network and network_isolation()[0]
        if not self.network and not isolate:
            result.events.append(network_isolation()[1])
        read_only = self.read_only_host and filesystem_isolation()[0]
        if self.read_only_host and not read_only:
            result.events.append(filesystem_isolation()[1])
        writable = tuple(str(p).encode() for p in (self.root, self._private, *self.writable))

        parent = os.getpid()

        def preexec() -> None:  # in the child, between fork and exec (after setsid)
            # the tool dies with the agent's process (a killed server must not leave a tool
            # finishing its side effect behind the run it resumes)
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the agent died before the line above
                os._exit(1)
            group.preexec()
            os.sched_setaffinity(0, cpus)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if nproc_limit is not None:
                resource.setrlimit(resource.RLIMIT_NPROC, (nproc_limit, nproc_limit))
            _isolate(isolate, writable if read_only else None)

        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                list(argv),
                cwd=workdir,
                env=self.environment(len(cpus), env),
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=preexec,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            group.close()
            result.exit_code = None
            result.error = f"{tool}: could not start {argv[0]!r}: {exc}"
            return result
        try:
            group.started(proc.pid)
            status, rusage = self._wait(proc, group, stdin, limits, result)
        finally:
            try:
                events = _events_before_close(group)
            finally:
                final = group.close()
        result.duration_seconds = time.monotonic() - started
        if os.WIFSIGNALED(status):
            result.exit_code = None
            result.signal = signal.Signals(os.WTERMSIG(status)).name
            if not result.timed_out and not result.error:
                result.error = f"{tool}: killed by {result.signal}"
        else:
            result.exit_code = os.WEXITSTATUS(status)
        self._account(result, final, rusage, events)
        return result

    def _wait(
        self,
        proc: subprocess.Popen[bytes],
        group: Any,
        stdin: bytes | None,
        limits: CallLimits,
        result: ToolResult,
    ) -> tuple[int, resource.struct_rusage]:
        """Collect output until the process exits or its time is up; then end its group."""
        out, err = _Capped(limits.output_bytes), _Capped(limits.output_bytes)
        pidfd = os.pidfd_open(proc.pid)
        selector = selectors.DefaultSelector()
        assert proc.stdout is not None and proc.stderr is not None
        for stream, sink in ((proc.stdout, out), (proc.stderr, err)):
            os.set_blocking(stream.fileno(), False)
            selector.register(stream.fileno(), selectors.EVENT_READ, sink)
        selector.register(pidfd, selectors.EVENT_READ, None)
        if stdin is not None and proc.stdin is not None:
            threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True).start()
        deadline = time.monotonic() + limits.timeout_seconds
        exited = False
        try:
            while not exited:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    result.timed_out = True
                    result.error = f"timed out after {limits.timeout_seconds:g} s: killed"
                    result.events.append(
                        f"timeout after {limits.timeout_seconds:g} s: process group killed"
                    )
                    _kill_tree(proc.pid)
                    _group_of(group).kill()  # also what escaped the session
                    break
                for key, _ in selector.select(remaining):
                    if key.data is None:
                        exited = True
                    elif not _read_into(key.fd, key.data):
                        selector.unregister(key.fd)
            _, status, rusage = os.wait4(proc.pid, 0)
            proc.returncode = -1  # reaped here; keeps Popen from waiting again
            # Anything the call left running ends with it: its session, and (cgroups) what
            # double-forked out of it, before their open pipes would hold up the drain below.
            leftovers = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                leftovers = False
            if _group_of(group).pids():
                leftovers = True
                _group_of(group).kill()
            if leftovers and not result.timed_out:
                result.events.append("background processes left by the call were killed")
            drain_until = time.monotonic() + _DRAIN_SECONDS
            while len(selector.get_map()) > 1 and time.monotonic() < drain_until:
                for key, _ in selector.select(drain_until - time.monotonic()):
                    if key.data is not None and not _read_into(key.fd, key.data):
                        selector.unregister(key.fd)
        finally:
            selector.close()
            os.close(pidfd)
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                if stream is not None:
                    stream.close()
        result.stdout, cut_out = out.text()
        result.stderr, cut_err = err.text()
        result.truncated = cut_out or cut_err
        return status, rusage

    def _account(self, result: ToolResult, final: Any, rusage: Any, events: Any) -> None:
        """Peak memory, CPU time and the resource events of the finished call."""
        usage = getattr(final, "usage", final)  # a broker LeaseOutcome wraps the usage
        # The group's peak covers the whole tree; the kernel's ru_maxrss is exact for the
        # largest single process even where the group only samples (the fallback's poller).
        result.peak_memory_bytes = max(getattr(usage, "memory_peak", 0), rusage.ru_maxrss * 1024)
        result.cpu_seconds = getattr(usage, "cpu_seconds", None) or (
            rusage.ru_utime + rusage.ru_stime
        )
        result.events.extend(_describe_events(getattr(final, "events", None) or events))
        message = getattr(final, "message", None)
        if message:  # the broker ended the call, e.g. "[OOM] peak 612 MB, budget 512 MB"
            result.error = message
            result.events.append(message)


def _group_of(group_or_lease: Any) -> res.ResourceGroup:
    """The resource group itself, also when a policy's lease wraps it."""
    return getattr(group_or_lease, "group", group_or_lease)


def _events_before_close(group: Any) -> Any:
    """The group's event counters, read while its cgroup still exists."""
    return _group_of(group).events()


def _describe_events(events: Any) -> Iterator[str]:
    if events is None:
        return
    labels = {
        "oom_kill": "killed by the out-of-memory killer",
        "oom": "hit its memory limit (out of memory)",
        "max": "reached its memory limit",
        "high": "passed its memory high-water mark",
        "pids_max": "fork refused at the pids limit",
        "cpu_throttled": "throttled by its CPU quota",
    }
    for name, label in labels.items():
        count = getattr(events, name, 0)
        if count:
            yield f"{label} ({count}x)"
    if getattr(events, "held", False):
        yield "held at its memory limit"


def _read_into(fd: int, sink: _Capped) -> bool:
    """Read what is there; False at end of stream."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        sink.add(chunk)


def _feed(stream: Any, data: bytes) -> None:
    try:
        stream.write(data)
        stream.close()
    except (BrokenPipeError, ValueError, OSError):
        pass  # the process stopped reading: what it did with its input is its result


def _kill_tree(pid: int) -> None:
    """SIGKILL the call's process group and every descendant that left it."""
    stragglers = _descendants(pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for straggler in stragglers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(straggler, signal.SIGKILL)
