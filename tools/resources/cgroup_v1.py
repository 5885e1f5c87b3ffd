"""cgroup v1: a memory limit that HOLDS a call instead of killing it, with eventfd notifications.

With `memory.oom_control` set to `oom_kill_disable 1`, a task that reaches memory.limit_in_bytes
sleeps in the kernel (no CPU, no overshoot) until the limit is raised or it is killed; an eventfd
registered through `cgroup.event_control` on memory.oom_control fires within milliseconds, and a
second one on memory.usage_in_bytes fires at the `memory_high` threshold. CPU quota from the cpu
controller (cfs_quota_us), accounting from cpuacct, pids.max, and freezer.state for park/kill,
each used when its hierarchy is mounted and writable.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from pathlib import Path

from .base import (
    CgroupFs,
    Events,
    Limits,
    ResourceError,
    Usage,
    read_int,
    read_keyed,
    signal_pids,
    write_file,
)
from .cgroup import CgroupController, CgroupGroup

CFS_PERIOD_US = 100_000
HELD_MARGIN = (
    4 << 20
)  # a held task's usage sits within a charge batch (or a huge page) of the limit
UNLIMITED = "-1"


class V1Group(CgroupGroup):
    def setup(self) -> None:
        self._high_fd: int | None = None
        self._oom_fd: int | None = None
        self._control_fds: list[int] = []
        self._notes = {"oom": 0, "high": 0}
        self._epoll = select.epoll()
        mem = self.dirs.get("memory")
        if mem is not None:
            # Hold instead of kill: set before any limit so a task never meets a killing limit.
            write_file(mem / "memory.oom_control", "0" if self.limits.oom_kill else "1")
            self._oom_fd = self._register(mem, "memory.oom_control", "")
        self._apply(self.limits, previous=Limits())

    def _register(self, mem: Path, control: str, arg: str) -> int:
        """An eventfd the kernel signals on `control` (cgroup.event_control protocol)."""
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        cfd = os.open(mem / control, os.O_RDONLY | os.O_CLOEXEC)
        self._control_fds.append(cfd)
        write_file(mem / "cgroup.event_control", f"{efd} {cfd} {arg}".strip())
        self._epoll.register(efd, select.EPOLLIN)
        return efd

    def _apply(self, limits: Limits, previous: Limits) -> None:
        mem = self.dirs.get("memory")
        if mem is not None and limits.memory_max != previous.memory_max:
            self._write_memory_limit(mem, limits.memory_max)
        if mem is not None and limits.memory_high != previous.memory_high:
            if self._high_fd is not None:
                self._epoll.unregister(self._high_fd)
                os.close(self._high_fd)  # closing the eventfd unregisters the threshold
                self._high_fd = None
            if limits.memory_high is not None:
                self._high_fd = self._register(
                    mem, "memory.usage_in_bytes", str(limits.memory_high)
                )
        cpu = self.dirs.get("cpu")
        if cpu is not None and limits.cpu_cores != previous.cpu_cores:
            if limits.cpu_cores is None:
                write_file(cpu / "cpu.cfs_quota_us", UNLIMITED)
            else:
                write_file(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US))
                quota = max(1000, int(limits.cpu_cores * CFS_PERIOD_US))
                write_file(cpu / "cpu.cfs_quota_us", str(quota))
        pids = self.dirs.get("pids")
        if pids is not None and limits.pids != previous.pids:
            write_file(pids / "pids.max", "max" if limits.pids is None else str(limits.pids))

    def _write_memory_limit(self, mem: Path, limit: int | None) -> None:
        value = UNLIMITED if limit is None else str(limit)
        memsw = mem / "memory.memsw.limit_in_bytes"
        if not memsw.exists():
            write_file(mem / "memory.limit_in_bytes", value)
            return
        # memsw (memory + swap) must stay >= the memory limit: raise it first, lower it last, so
        # a call cannot escape its limit into swap.
        current = read_int(mem / "memory.limit_in_bytes", default=-1)
        growing = limit is None or (current >= 0 and limit > current)
        order = (memsw, mem / "memory.limit_in_bytes")
        for path in order if growing else reversed(order):
            write_file(path, value)

    def set_limits(self, limits: Limits) -> None:
        previous, self.limits = self.limits, limits
        mem = self.dirs.get("memory")
        if mem is not None and limits.oom_kill != previous.oom_kill:
            write_file(mem / "memory.oom_control", "0" if limits.oom_kill else "1")
        self._apply(limits, previous)

    def notify_fd(self) -> int | None:
        return self._epoll.fileno()

    def _drain(self) -> None:
        for key, fd in (("oom", self._oom_fd), ("high", self._high_fd)):
            if fd is None:
                continue
            with contextlib.suppress(BlockingIOError):  # nothing new since the last read
                self._notes[key] += os.eventfd_read(fd)

    def events(self) -> Events:
        self._drain()
        mem = self.dirs.get("memory")
        oom_control = read_keyed(mem / "memory.oom_control") if mem else {}
        held = oom_control.get("under_oom", 0) == 1
        if held and self.limits.memory_max is not None:
            # under_oom stays 1 for a moment after the limit was raised, until the woken task
            # leaves the OOM path: held only while usage is still at the limit.
            usage = read_int(mem / "memory.usage_in_bytes")
            held = usage > self.limits.memory_max - HELD_MARGIN
        cpu_stat = read_keyed(self.dirs["cpu"] / "cpu.stat") if "cpu" in self.dirs else {}
        pids_events = read_keyed(self.dirs["pids"] / "pids.events") if "pids" in self.dirs else {}
        return Events(
            high=self._notes["high"],
            max=max(read_int(mem / "memory.failcnt") if mem else 0, self._notes["oom"]),
            oom=max(self._notes["oom"], int(held)),
            oom_kill=oom_control.get("oom_kill", 0),
            held=held,
            cpu_throttled=cpu_stat.get("nr_throttled", 0),
            pids_max=pids_events.get("max", 0),
        )

    def usage(self) -> Usage:
        if self._final is not None:
            return self._final
        mem = self.dirs.get("memory")
        acct = self.dirs.get("cpuacct")
        return Usage(
            memory_current=read_int(mem / "memory.usage_in_bytes") if mem else 0,
            memory_peak=read_int(mem / "memory.max_usage_in_bytes") if mem else 0,
            cpu_seconds=read_int(acct / "cpuacct.usage") / 1e9 if acct else 0.0,
        )

    def freeze(self) -> None:
        freezer = self.dirs.get("freezer")
        if freezer is None:
            signal_pids(self.pids(), 19)  # SIGSTOP: no freezer hierarchy here
            return
        write_file(freezer / "freezer.state", "FROZEN")
        # FREEZING until every task has stopped; bounded so a wedged task cannot hang us.
        for _ in range(200):
            if (freezer / "freezer.state").read_text().strip() == "FROZEN":
                return
            time.sleep(0.001)

    def thaw(self) -> None:
        freezer = self.dirs.get("freezer")
        if freezer is None:
            signal_pids(self.pids(), 18)  # SIGCONT
            return
        write_file(freezer / "freezer.state", "THAWED")

    def _after_kill_signal(self) -> None:
        # A frozen task only dies once thawed; a held one dies from its killable OOM sleep.
        if "freezer" in self.dirs:
            self.thaw()

    def _release(self) -> None:
        for fd in (self._oom_fd, self._high_fd, *self._control_fds):
            if fd is not None:
                os.close(fd)
        self._oom_fd = self._high_fd = None
        self._control_fds = []
        self._epoll.close()


class V1Controller(CgroupController):
    """`owners` maps "memory", "cpu", "cpuacct", "pids", "freezer" to our own group in each."""

    name = "cgroup-v1"
    group_class = V1Group

    def __init__(
        self, owners: dict[str, Path], fs: CgroupFs | None = None, *, reason: str = ""
    ) -> None:
        if "memory" not in owners:
            raise ResourceError("cgroup v1 needs the memory controller")
        super().__init__(owners, fs)
        self.reason = reason
        features = {"memory", "hold", "notify", "nested"}
        features |= {k for k in owners if k in {"cpu", "pids"}}
        if "freezer" in owners:
            features.add("freeze")
        self.features = frozenset(features)
