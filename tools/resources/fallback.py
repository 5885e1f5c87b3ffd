"""No writable cgroup: rlimits set in the child before exec, a poller that sums the RSS of each
call's process tree every `interval` seconds and parks the tree with SIGSTOP at its limit.

What this cannot do, said plainly: a call can overshoot its limit by what it allocates between
two polls (about rate x interval); a process that leaves the call's process group and is
re-parented to init escapes the tree; the number of processes is not bounded per call
(RLIMIT_NPROC counts every process of the user and root ignores it); CPU is bounded by pinning
the call to ceil(cores) CPUs, not by a quota. RLIMIT_DATA at twice the limit (plus the
interpreter's share) is a backstop that makes a runaway allocation fail instead of taking the host
(a soft limit: the tool could raise it, so it guards against accidents, not against malice).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import resource
import signal
import threading
import time
from pathlib import Path

from .base import (
    Controller,
    Events,
    Limits,
    MiB,
    ResourceError,
    ResourceGroup,
    Usage,
    check_call_id,
    signal_pids,
    wait_gone,
)

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
BACKSTOP_BASE = 256 * MiB


def data_backstop(limits: Limits) -> int:
    return (
        resource.RLIM_INFINITY
        if limits.memory_max is None
        else 2 * limits.memory_max + BACKSTOP_BASE
    )


def soft_limit(wanted: int, hard: int) -> int:
    """`wanted`, but never above the hard limit (RLIM_INFINITY is -1: no bound)."""
    inf = resource.RLIM_INFINITY
    if wanted == inf:
        return hard
    return wanted if hard == inf else min(wanted, hard)


def scan_processes() -> dict[int, tuple[int, int, float]]:
    """pid -> (ppid, pgid, cpu seconds) for every process, from one pass over /proc."""
    table: dict[int, tuple[int, int, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited while we listed
        fields = stat[stat.rindex(b")") + 2 :].split()
        if fields[0] == b"Z":
            continue
        cpu = (int(fields[11]) + int(fields[12])) / TICKS
        table[int(name)] = (int(fields[1]), int(fields[2]), cpu)
    return table


def rss_bytes(pid: int) -> tuple[int, int]:
    """(resident bytes, peak resident bytes VmHWM) of one process; (0, 0) once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    rss = hwm = 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    return rss, hwm


def wait_stopped(pids: set[int], attempts: int = 400) -> None:
    """Wait (bounded) until SIGSTOP has taken effect: a signal is delivered asynchronously."""
    for _ in range(attempts):
        pending = False
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue  # exited
            if stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] not in (b"T", b"t", b"Z"):
                pending = True
                break
        if not pending:
            return
        time.sleep(0.0005)


class FallbackGroup(ResourceGroup):
    def __init__(self, controller: FallbackController, call_id: str, limits: Limits) -> None:
        super().__init__(call_id, limits)
        self.controller = controller
        self._cpus = controller.pick_cpus(limits.cpu_cores)
        self._backstop = data_backstop(limits)
        self._lock = threading.Lock()
        self._tree: set[int] = set()
        self._current = 0
        self._peak = 0
        self._cpu = 0.0
        self._counts = {"high": 0, "max": 0, "oom": 0, "oom_kill": 0}
        self._above_high = False
        self.held = False
        self.frozen = False
        self.stop_overshoot = 0
        """Bytes above memory_max when the poller stopped the call (what polling lets through)."""
        self._efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._final: Usage | None = None

    def preexec(self) -> None:
        if os.getpgid(0) != os.getpid():
            os.setpgid(0, 0)  # the call's process group is how the poller finds its tree
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # Soft limit only: raising another process's hard limit later needs CAP_SYS_RESOURCE.
        hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
        resource.setrlimit(resource.RLIMIT_DATA, (soft_limit(self._backstop, hard), hard))
        if self._cpus:
            os.sched_setaffinity(0, self._cpus)

    def started(self, pid: int) -> None:
        super().started(pid)
        self._tree = {pid}
        self.controller.watch(self)

    def pids(self) -> list[int]:
        return sorted(self._tree)

    # -- the poller's step -------------------------------------------------------------------

    def poll(self, table: dict[int, tuple[int, int, float]]) -> None:
        """Refresh the tree and usage; stop (or kill) the tree at memory_max."""
        if self.pid is None:
            return
        with self._lock:
            tree = {self.pid} if self.pid in table else set()
            tree |= {p for p, (_, pgid, _) in table.items() if pgid == self.pid}
            grew = True
            while grew:  # descendants that left the process group
                extra = {p for p, (ppid, _, _) in table.items() if ppid in tree} - tree
                grew = bool(extra)
                tree |= extra
            self._tree = tree
            if tree:
                self._cpu = max(self._cpu, sum(table[p][2] for p in tree))
            current = hwm = 0
            for pid in tree:
                rss, peak = rss_bytes(pid)
                current += rss
                hwm = max(hwm, peak)
            self._current = current
            self._peak = max(self._peak, current, hwm)
            notify = False
            high = self.limits.memory_high
            if high is not None and current >= high and not self._above_high:
                self._counts["high"] += 1
                notify = True
            self._above_high = high is not None and current >= high
            limit = self.limits.memory_max
            if limit is not None and current >= limit and not self.held and tree:
                self._counts["max"] += 1
                self._counts["oom"] += 1
                notify = True
                if self.limits.oom_kill:
                    signal_pids(tree, signal.SIGKILL)
                    self._counts["oom_kill"] += len(tree)
                else:
                    signal_pids(tree, signal.SIGSTOP)
                    wait_stopped(tree)
                    self.held = True
                    stopped = sum(rss_bytes(p)[0] for p in tree)
                    self._peak = max(self._peak, stopped)
                    self.stop_overshoot = max(self.stop_overshoot, stopped - limit)
            if notify:
                os.eventfd_write(self._efd, 1)

    # -- the interface -----------------------------------------------------------------------

    def notify_fd(self) -> int | None:
        return self._efd

    def usage(self) -> Usage:
        if self._final is not None:
            return self._final
        return Usage(self._current, self._peak, self._cpu)

    def events(self) -> Events:
        with contextlib.suppress(BlockingIOError):  # no notification pending
            os.eventfd_read(self._efd)
        return Events(
            high=self._counts["high"],
            max=self._counts["max"],
            oom=self._counts["oom"],
            oom_kill=self._counts["oom_kill"],
            held=self.held,
        )

    def set_limits(self, limits: Limits) -> None:
        with self._lock:
            self.limits = limits
            self._backstop = data_backstop(limits)
            if self.pid is not None:
                try:
                    hard = resource.prlimit(self.pid, resource.RLIMIT_DATA)[1]
                    soft = soft_limit(self._backstop, hard)
                    resource.prlimit(self.pid, resource.RLIMIT_DATA, (soft, hard))
                except ProcessLookupError:
                    pass  # the call has exited
            fits = limits.memory_max is None or self._current < limits.memory_max
            if self.held and fits:
                self.held = False
                if not self.frozen:
                    signal_pids(self._tree, signal.SIGCONT)

    def freeze(self) -> None:
        with self._lock:
            self.frozen = True
            signal_pids(self._tree, signal.SIGSTOP)
            wait_stopped(self._tree)

    def thaw(self) -> None:
        with self._lock:
            self.frozen = False
            if not self.held:
                signal_pids(self._tree, signal.SIGCONT)

    def kill(self) -> None:
        for _ in range(20):
            self.poll(scan_processes())
            if not self._tree:
                return
            tree = set(self._tree)
            signal_pids(tree, signal.SIGKILL)
            signal_pids(tree, signal.SIGCONT)
            wait_gone(tree, attempts=40)
        raise ResourceError(f"processes of tool call {self.call_id} survived SIGKILL")

    def close(self) -> Usage:
        if self._final is not None:
            return self._final
        self.controller.unwatch(self)
        final = self.usage()
        try:
            self.kill()
        finally:
            os.close(self._efd)
            self._final = final
            self.closed = True
        return final


class FallbackController(Controller):
    name = "fallback"

    def __init__(self, *, interval: float = 0.01, reason: str = "") -> None:
        self.interval = interval
        self.reason = reason
        self.features = frozenset({"memory", "hold", "freeze", "cpu"})
        self._groups: list[FallbackGroup] = []
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._next_cpu = itertools.count()
        self._closed = False

    def create(
        self, call_id: str, limits: Limits, parent: ResourceGroup | None = None
    ) -> FallbackGroup:
        check_call_id(call_id)
        if parent is not None:
            raise ResourceError("nested groups need cgroups; the fallback controller has none")
        return FallbackGroup(self, call_id, limits)

    def pick_cpus(self, cores: float | None) -> list[int]:
        if cores is None:
            return []
        allowed = sorted(os.sched_getaffinity(0))
        n = min(len(allowed), max(1, int(cores + 0.999)))
        start = next(self._next_cpu)
        return [allowed[(start + i) % len(allowed)] for i in range(n)]

    def watch(self, group: FallbackGroup) -> None:
        with self._lock:
            self._groups.append(group)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="hetagent-resource-poller", daemon=True
                )
                self._thread.start()
            self._lock.notify()
        group.poll(scan_processes())  # the first reading does not wait for the poller

    def unwatch(self, group: FallbackGroup) -> None:
        with self._lock:
            if group in self._groups:
                self._groups.remove(group)

    def poll_once(self) -> None:
        with self._lock:
            groups = list(self._groups)
        if groups:
            table = scan_processes()
            for group in groups:
                group.poll(table)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._groups and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                self._lock.wait(self.interval)
            self.poll_once()

    def close(self) -> None:
        with self._lock:
            groups = list(self._groups)
        for group in groups:
            group.close()
        with self._lock:
            self._closed = True
            self._lock.notify_all()
