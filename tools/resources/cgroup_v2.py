"""cgroup v2: memory.high throttles a call at its grant (it never kills), memory.max a little
above is the kernel's backstop, memory.events is pollable, cgroup.freeze parks and cgroup.kill
ends a call (with every process it forked) in one write.

v2 cannot hold a task at memory.max the way v1's oom_kill_disable does; the call is slowed at
memory.high and the policy reacts (grow or freeze) to the `high` events.
"""

from __future__ import annotations

import os
import select
import time
from pathlib import Path

from .base import (
    CgroupFs,
    Events,
    Limits,
    MiB,
    ResourceError,
    ResourceGroup,
    Usage,
    read_int,
    read_keyed,
    write_file,
)
from .cgroup import CgroupController, CgroupGroup

CPU_PERIOD_US = 100_000
WANTED = ("memory", "cpu", "pids")


def kill_slack(memory_max: int) -> int:
    """How far above memory.high the kernel's memory.max kills: an eighth, at least 16 MiB."""
    return max(16 * MiB, memory_max // 8)


class V2Group(CgroupGroup):
    def setup(self) -> None:
        self.dir = self.dirs["unified"]
        self._peak_seen = 0
        self._events_fd: int | None = None
        self._epoll: select.epoll | None = None
        if (self.dir / "memory.swap.max").exists():
            write_file(self.dir / "memory.swap.max", "0")  # no escape into swap
        if (self.dir / "memory.oom.group").exists():
            write_file(self.dir / "memory.oom.group", "1")  # an OOM kill ends the whole call
        self._apply(self.limits)
        try:
            fd = os.open(self.dir / "memory.events", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        epoll = select.epoll()
        try:
            # kernfs signals a changed memory.events with POLLPRI; a plain file cannot be polled.
            epoll.register(fd, select.EPOLLPRI)
        except PermissionError:
            os.close(fd)
            epoll.close()
            return
        self._events_fd, self._epoll = fd, epoll

    def _apply(self, limits: Limits) -> None:
        d = self.dir
        if limits.memory_max is None:
            high, hard = limits.memory_high, None
        elif limits.oom_kill:
            high, hard = limits.memory_high, limits.memory_max
        else:  # memory.high is the grant; v2 has no event for an earlier warning level
            high = limits.memory_max
            hard = limits.memory_max + kill_slack(limits.memory_max)
        # Raise max before high and lower high before max, so high <= max at every moment.
        steps = [("memory.max", hard), ("memory.high", high)]
        current_max = read_int(d / "memory.max", default=-1)
        if hard is not None and 0 <= hard < current_max:
            steps.reverse()
        for name, value in steps:
            write_file(d / name, "max" if value is None else str(value))
        if "cpu" in self.controller.enabled:
            quota = (
                "max"
                if limits.cpu_cores is None
                else str(max(1000, int(limits.cpu_cores * CPU_PERIOD_US)))
            )
            write_file(d / "cpu.max", f"{quota} {CPU_PERIOD_US}")
        if "pids" in self.controller.enabled:
            write_file(d / "pids.max", "max" if limits.pids is None else str(limits.pids))

    def set_limits(self, limits: Limits) -> None:
        self.limits = limits
        self._apply(limits)

    def notify_fd(self) -> int | None:
        return None if self._epoll is None else self._epoll.fileno()

    def events(self) -> Events:
        mem = read_keyed(self.dir / "memory.events")
        cpu = read_keyed(self.dir / "cpu.stat")
        pids = read_keyed(self.dir / "pids.events")
        if self._events_fd is not None:
            os.pread(self._events_fd, 4096, 0)  # re-arm the POLLPRI notification
        current = read_int(self.dir / "memory.current")
        high = read_int(self.dir / "memory.high", default=-1)
        return Events(
            high=mem.get("high", 0),
            max=mem.get("max", 0),
            oom=mem.get("oom", 0),
            oom_kill=mem.get("oom_kill", 0),
            held=0 <= high <= current,
            cpu_throttled=cpu.get("nr_throttled", 0),
            pids_max=pids.get("max", 0),
        )

    def usage(self) -> Usage:
        if self._final is not None:
            return self._final
        current = read_int(self.dir / "memory.current")
        # memory.peak exists from Linux 5.19; before it the highest value we have seen.
        self._peak_seen = max(self._peak_seen, current)
        peak = read_int(self.dir / "memory.peak", default=self._peak_seen)
        cpu = read_keyed(self.dir / "cpu.stat")
        return Usage(current, max(peak, current), cpu.get("usage_usec", 0) / 1e6)

    def _wait_frozen(self, frozen: int) -> None:
        for _ in range(200):
            if read_keyed(self.dir / "cgroup.events").get("frozen", frozen) == frozen:
                return
            time.sleep(0.001)

    def freeze(self) -> None:
        write_file(self.dir / "cgroup.freeze", "1")
        self._wait_frozen(1)

    def thaw(self) -> None:
        write_file(self.dir / "cgroup.freeze", "0")
        self._wait_frozen(0)

    def kill(self) -> None:
        if (self.dir / "cgroup.kill").exists() and self.pids():
            write_file(self.dir / "cgroup.kill", "1")  # Linux 5.14+: every task, atomically
        super().kill()

    def _release(self) -> None:
        if self._events_fd is not None:
            os.close(self._events_fd)
        if self._epoll is not None:
            self._epoll.close()
        self._events_fd, self._epoll = None, None


class V2Controller(CgroupController):
    """Groups beneath our own cgroup in the unified hierarchy, with memory (and cpu, pids when
    delegated) enabled in our parent group's subtree_control."""

    name = "cgroup-v2"
    group_class = V2Group

    def __init__(
        self,
        own: Path,
        fs: CgroupFs | None = None,
        *,
        available: frozenset[str] = frozenset(),
        reason: str = "",
    ) -> None:
        if "memory" not in available:
            raise ResourceError("cgroup v2 needs the memory controller delegated to our cgroup")
        super().__init__({"unified": own}, fs)
        self.enabled = frozenset(c for c in WANTED if c in available)
        self.reason = reason
        self.features = frozenset({"memory", "notify", "freeze", "nested"} | self.enabled)
        # The no-internal-process rule: our own group may hold processes only if the
        # controllers are already enabled below it (delegation); detect checks this.

    def _setup_parent(self, path: Path) -> None:
        write_file(path / "cgroup.subtree_control", " ".join(f"+{c}" for c in self.enabled))

    def create(
        self, call_id: str, limits: Limits, parent: ResourceGroup | None = None
    ) -> CgroupGroup:
        if isinstance(parent, V2Group) and not parent.children:
            # A nested group needs the controllers enabled in its parent (which then may hold
            # no processes itself: the no-internal-process rule).
            self._setup_parent(parent.dir)
        return super().create(call_id, limits, parent)
