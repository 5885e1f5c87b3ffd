"""The resource-controller interface every backend implements, and the host facts they share.

A controller creates one `ResourceGroup` per tool call. The sandbox spawns the call with
`preexec_fn=group.preexec`, so the child is inside its group before `exec` (nothing it runs is
ever unaccounted), then tells the group its pid with `started(pid)` and closes the group when the
call is over. Policies (`hetagent.policies.resources`) decide the limits; backends only apply
them: cgroup v2, cgroup v1, or an rlimit + polling fallback where no cgroup is writable.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import os
import re
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: Every cgroup we create is named `hetagent-<owner pid>-<owner start time>`: the sweep can tell
#: ours from anyone else's, and a dead owner from a live one even after its pid is reused.
PREFIX = "hetagent"
_OWNER_RE = re.compile(rf"^{PREFIX}-(\d+)-(\d+)$")
_CALL_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
MiB = 1 << 20

#: Thread-pool variables that numeric libraries read; set to the CPU grant so a tool does not
#: start one thread per host core (the fork/thread storms users report from sandboxes).
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "RAYON_NUM_THREADS",
    "TORCH_NUM_THREADS",
    "GOMAXPROCS",
)


class ResourceError(ValueError):
    """A request the controller cannot honour; the message is one line naming what to fix."""


@dataclass(frozen=True)
class Limits:
    """What one tool call may use. None means "no limit of this kind"."""

    memory_max: int | None = None
    """Bytes. The call is held here (not killed) where the backend can: v1 oom_kill_disable,
    fallback SIGSTOP; v2 throttles at memory.high = this and kills only past a slack above it."""
    memory_high: int | None = None
    """Bytes. An early-warning level below memory_max: crossing it counts as a `high` event
    (v1: usage threshold eventfd; fallback: the poller). On v2 it is memory.high only when
    memory_max is unset; otherwise v2's memory.high is memory_max (the grant)."""
    cpu_cores: float | None = None
    """A CFS quota in cores (0.5 = half a core)."""
    pids: int | None = None
    """Most processes and threads the call may have at once."""
    oom_kill: bool = False
    """At memory_max let the kernel's OOM killer act instead of holding the call (baselines)."""

    def __post_init__(self) -> None:
        for name in ("memory_max", "memory_high", "pids"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ResourceError(f"limit {name}={value!r} must be a positive integer")
        if self.cpu_cores is not None and not (0 < self.cpu_cores < 1e6):
            raise ResourceError(f"limit cpu_cores={self.cpu_cores!r} must be a positive number")

    def threads(self) -> int | None:
        """How many threads a tool should start for this CPU grant."""
        return None if self.cpu_cores is None else max(1, int(self.cpu_cores + 0.999))


@dataclass(frozen=True)
class Usage:
    memory_current: int = 0
    memory_peak: int = 0
    cpu_seconds: float = 0.0


@dataclass(frozen=True)
class Events:
    """Counts since the group was created (as the kernel reports them where it does)."""

    high: int = 0
    """Crossings of memory_high (v2: throttling events at memory.high)."""
    max: int = 0
    """Times usage hit memory_max (v1 failcnt, v2 memory.events max, fallback stops)."""
    oom: int = 0
    """Times the call was out of memory at its limit (held, or killed when not holdable)."""
    oom_kill: int = 0
    """Processes the kernel's OOM killer killed inside the group."""
    held: bool = False
    """The call is paused at its memory limit right now, waiting for more memory."""
    cpu_throttled: int = 0
    """CFS periods in which the call was throttled by its CPU quota."""
    pids_max: int = 0
    """Forks refused by the pids limit."""


class ResourceGroup(abc.ABC):
    """The controls of one tool call's group. `close()` must always be called."""

    def __init__(self, call_id: str, limits: Limits) -> None:
        self.call_id = call_id
        self.limits = limits
        self.pid: int | None = None
        self.closed = False

    @abc.abstractmethod
    def preexec(self) -> None:
        """Run in the child between fork and exec: join the group (async-signal-light code)."""

    def started(self, pid: int) -> None:
        """The call's process is running (already inside the group)."""
        self.pid = pid

    @abc.abstractmethod
    def usage(self) -> Usage: ...

    @abc.abstractmethod
    def events(self) -> Events: ...

    @abc.abstractmethod
    def set_limits(self, limits: Limits) -> None:
        """Change the limits in place; raising memory_max resumes a held call."""

    @abc.abstractmethod
    def freeze(self) -> None: ...

    @abc.abstractmethod
    def thaw(self) -> None: ...

    @abc.abstractmethod
    def kill(self) -> None:
        """SIGKILL every process of the call (never this process or its ancestors)."""

    @abc.abstractmethod
    def pids(self) -> list[int]:
        """The processes in the group now."""

    def notify_fd(self) -> int | None:
        """A file descriptor that becomes readable when a limit event may have happened."""
        return None

    @abc.abstractmethod
    def close(self) -> Usage:
        """Final usage; kills what is left and removes the group. Idempotent."""


class Controller(abc.ABC):
    """Creates the groups of tool calls; `name` and `reason` say which backend and why.

    `features` names what is enforced here: memory, hold (paused at the limit, not killed),
    notify (kernel notifications rather than polling), cpu, pids, freeze, nested."""

    name: str = ""
    reason: str = ""
    features: frozenset[str] = frozenset()

    @abc.abstractmethod
    def create(
        self, call_id: str, limits: Limits, parent: ResourceGroup | None = None
    ) -> ResourceGroup:
        """A group for one call; `parent` nests it in another group (where supported)."""

    @abc.abstractmethod
    def close(self) -> None:
        """End this controller's groups and remove its (now empty) parent groups."""


# ---------------------------------------------------------------------------------------------
# Host facts shared by the backends.


def check_call_id(call_id: str) -> str:
    if not isinstance(call_id, str) or not _CALL_ID_RE.fullmatch(call_id) or call_id in {".", ".."}:
        raise ResourceError(
            f"call id {call_id!r} must be 1-128 characters of letters, digits, '_', '.', '-'"
        )
    return call_id


def start_time(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (None if it does not exist)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces and parentheses: fields start after the last ')'.
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def owner_tag(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{PREFIX}-{pid}-{start_time(pid)}"


def owner_alive(name: str) -> bool | None:
    """Whether the owner of a `hetagent-<pid>-<start>` group lives (None: not one of ours)."""
    match = _OWNER_RE.fullmatch(name)
    if not match:
        return None
    return start_time(int(match.group(1))) == int(match.group(2))


def protected_pids() -> frozenset[int]:
    """This process and its ancestors: a controller never signals them (the agent's runtime)."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
    pids.add(1)
    return frozenset(pids)


def signal_pids(pids: Iterable[int], sig: int) -> None:
    """Send `sig` to each pid, skipping this process and its ancestors and the gone."""
    safe = protected_pids()
    for pid in pids:
        if pid in safe or pid <= 0:
            continue
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.kill(pid, sig)


def thread_env(cores: float | None) -> dict[str, str]:
    """Environment variables that bound a tool's thread pools to its CPU grant."""
    if cores is None:
        return {}
    n = str(max(1, int(cores + 0.999)))
    return dict.fromkeys(THREAD_VARIABLES, n)


def write_file(path: Path, value: str) -> None:
    """Write a control file in one write(2), as the kernel expects; errors name the file."""
    try:
        # O_TRUNC is ignored by cgroupfs and keeps a fake tree's files as the kernel shows them.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise ResourceError(
            f"cannot write {value!r} to {path}: {os.strerror(exc.errno or 0)}"
        ) from exc


def read_int(path: Path, default: int = 0) -> int:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return default
    return default if text in ("", "max") else int(text)


def read_keyed(path: Path) -> dict[str, int]:
    """A flat keyed file (`key value` per line) such as memory.events or cpu.stat."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    out: dict[str, int] = {}
    for line in lines:
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def read_pids(path: Path) -> list[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return []


class CgroupFs:
    """Directory operations on a cgroup filesystem: the kernel creates a group's control files
    on mkdir and removes them on rmdir. Tests substitute a fake that does the same on a tmp dir."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def rmdir(self, path: Path) -> None:
        # A group whose last process has just been reaped can stay busy for a moment.
        for delay in (0, 0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.5):
            time.sleep(delay)
            try:
                os.rmdir(path)
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
        os.rmdir(path)


def running(pid: int) -> bool:
    """The process exists and has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_gone(pids: Iterable[int], attempts: int = 200) -> None:
    """Wait (bounded) until these processes have exited (for kill before rmdir)."""
    pending = set(pids)
    for _ in range(attempts):
        pending = {p for p in pending if running(p)}
        if not pending:
            return
        time.sleep(0.005)


SIGKILL = signal.SIGKILL
