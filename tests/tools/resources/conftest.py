"""Fake cgroup filesystems laid out like the kernel's, and the real host's controller.

A fake tree is a tmp dir standing for "/": `proc/self/{mountinfo,cgroup}` and the cgroup mounts
under `sys/fs/cgroup`. `FakeKernel` does what the kernel does on mkdir (creates the control files
with their initial contents) and on rmdir (refuses a group with processes, removes the files).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from hetagent.tools.resources import ENV, CgroupFs, detect_controller
from hetagent.tools.resources.base import owner_tag

UNLIMITED_V1 = "9223372036854771712"

V1_FILES = {
    "memory": {
        "memory.limit_in_bytes": UNLIMITED_V1,
        "memory.memsw.limit_in_bytes": UNLIMITED_V1,
        "memory.usage_in_bytes": "0",
        "memory.max_usage_in_bytes": "0",
        "memory.failcnt": "0",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        "cgroup.event_control": "",
    },
    "cpu": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "-1", "cpu.stat": ""},
    "cpuacct": {"cpuacct.usage": "0"},
    "pids": {"pids.max": "max", "pids.current": "0", "pids.events": "max 0\n"},
    "freezer": {"freezer.state": "THAWED"},
}
V2_FILES = {
    "cgroup.controllers": "",
    "cgroup.subtree_control": "",
    "cgroup.events": "populated 0\n",
    "cgroup.freeze": "0",
    "cgroup.kill": "",
    "memory.current": "0",
    "memory.peak": "0",
    "memory.high": "max",
    "memory.max": "max",
    "memory.swap.max": "max",
    "memory.oom.group": "0",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    "cpu.max": "max 100000",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
    "pids.max": "max",
    "pids.events": "max 0\n",
}


class FakeKernel(CgroupFs):
    """mkdir/rmdir on a fake tree as the cgroup filesystem does them."""

    def __init__(self, mounts: dict[Path, tuple[int, frozenset[str]]]) -> None:
        self.mounts = mounts

    def _mount(self, path: Path) -> tuple[int, frozenset[str]]:
        for mount, kind in self.mounts.items():
            if path.is_relative_to(mount):
                return kind
        raise AssertionError(f"{path} is not in a fake cgroup mount")

    def populate(self, path: Path) -> None:
        version, controllers = self._mount(path)
        files = {"cgroup.procs": "", "tasks": ""} if version == 1 else {"cgroup.procs": ""}
        if version == 1:
            for c in controllers:
                files.update(V1_FILES.get(c, {}))
        else:
            files.update(V2_FILES)
            if path in self.mounts:  # the root group has every controller of the mount
                files["cgroup.controllers"] = " ".join(sorted(controllers))
            else:
                parent = (path.parent / "cgroup.subtree_control").read_text().split()
                files["cgroup.controllers"] = " ".join(c.lstrip("+") for c in parent)
        for name, text in files.items():
            (path / name).write_text(text)

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)
        self.populate(path)

    def rmdir(self, path: Path) -> None:
        if any(p.is_dir() for p in path.iterdir()):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))
        if (path / "cgroup.procs").read_text().split():
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))
        shutil.rmtree(path)


@dataclass
class FakeHost:
    root: Path
    kernel: FakeKernel
    own: dict[str, Path]
    """controller (or "unified") -> our own cgroup dir in the fake tree."""

    def detect(self):
        return detect_controller(self.root, self.kernel)


OWN = "/process_api/abc123"


def _proc(root: Path, mountinfo: list[str], cgroup: list[str]) -> None:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/mountinfo").write_text("\n".join(mountinfo) + "\n")
    (root / "proc/self/cgroup").write_text("\n".join(cgroup) + "\n")


@pytest.fixture(autouse=True)
def _no_forced_backend_on_fake_hosts(request, monkeypatch) -> None:
    """A user's HETAGENT_RESOURCE_CONTROLLER applies to the real host, not to fake trees."""
    if {"v1_host", "v2_host"} & set(request.fixturenames):
        monkeypatch.delenv(ENV, raising=False)


@pytest.fixture
def v1_host(tmp_path: Path) -> FakeHost:
    """Like this team's VMs: v1 controllers, memory places us at /process_api/abc123, the rest
    at /; cgroup2 mounted at unified with no controllers."""
    root = tmp_path / "root"
    names = ["cpu", "cpuacct", "memory", "pids", "freezer"]
    mounts, lines, cgroup, own = {}, [], [], {}
    for i, name in enumerate(names):
        mount = root / "sys/fs/cgroup" / name
        mounts[mount] = (1, frozenset({name}))
        lines.append(f"{30 + i} 20 0:{30 + i} / /sys/fs/cgroup/{name} rw - cgroup cgroup rw,{name}")
        path = OWN if name == "memory" else "/"
        cgroup.append(f"{i + 1}:{name}:{path}")
        own[name] = mount / path.lstrip("/")
    unified = root / "sys/fs/cgroup/unified"
    mounts[unified] = (2, frozenset())
    lines.append("40 20 0:40 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw")
    cgroup.append("0::/")
    _proc(root, lines, cgroup)
    kernel = FakeKernel(mounts)
    for mount in mounts:
        mount.mkdir(parents=True)
    for mount, (version, _) in mounts.items():
        if version == 2:
            (mount / "cgroup.subtree_control").write_text("")
        kernel.populate(mount)
    own["memory"].mkdir(parents=True)
    kernel.populate(own["memory"])
    return FakeHost(root, kernel, own)


@pytest.fixture
def v2_host(tmp_path: Path) -> FakeHost:
    """A pure v2 host where our group (/user.slice/agent.scope) has memory, cpu, pids delegated
    and already enabled below it (as systemd-run --scope -p Delegate=yes leaves it)."""
    root = tmp_path / "root"
    mount = root / "sys/fs/cgroup"
    own = mount / "user.slice/agent.scope"
    own.mkdir(parents=True)
    kernel = FakeKernel({mount: (2, frozenset({"memory", "cpu", "pids"}))})
    (mount / "cgroup.subtree_control").write_text("+memory +cpu +pids")
    (own.parent / "cgroup.subtree_control").write_text("+memory +cpu +pids")
    kernel.populate(own)
    (own / "cgroup.subtree_control").write_text("memory cpu pids")
    _proc(
        root,
        ["30 20 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw"],
        ["0::/user.slice/agent.scope"],
    )
    return FakeHost(root, kernel, {"unified": own})


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def real_controller():
    """The controller this host really allows; tests that need a kernel backend skip otherwise."""
    controller = detect_controller()
    yield controller
    controller.close()


def require(controller, name: str, *features: str) -> None:
    """Skip (with the reason the host gave) unless the real controller is `name` with features."""
    if controller.name != name:
        pytest.skip(f"host runs {controller.name}, not {name}: {controller.reason}")
    missing = [f for f in features if f not in controller.features]
    if missing:
        pytest.skip(f"{name} here lacks {', '.join(missing)}: {controller.reason}")


@pytest.fixture
def require_backend():
    return require


@pytest.fixture
def my_tag() -> str:
    return owner_tag()


# --- a fake controller for the policies: usage and limit hits are set by the test --------------


class FakeGroup:
    """A group whose usage and held state the test sets; it records what the policy did."""

    def __init__(self, controller: FakeController, call_id: str, limits) -> None:
        from hetagent.tools.resources import Events, Usage

        self.controller, self.call_id, self.limits = controller, call_id, limits
        self.pid: int | None = None
        self.held = False
        self.peak = 0
        self.frozen = False
        self.killed = False
        self.closed = False
        self.limit_history = [limits]
        self._events, self._usage = Events, Usage

    def preexec(self) -> None:
        pass

    def started(self, pid: int) -> None:
        self.pid = pid

    def usage(self):
        return self._usage(self.peak, self.peak, 0.0)

    def events(self):
        return self._events(held=self.held, oom=int(self.held))

    def set_limits(self, limits) -> None:
        self.limits = limits
        self.limit_history.append(limits)
        if limits.memory_max is not None and limits.memory_max > self.peak:
            self.held = False  # the kernel resumes a held task when its limit is raised

    def freeze(self) -> None:
        self.frozen = True

    def thaw(self) -> None:
        self.frozen = False

    def kill(self) -> None:
        self.killed = True

    def pids(self) -> list[int]:
        return [] if self.pid is None else [self.pid]

    def notify_fd(self) -> None:
        return None

    def close(self):
        self.closed = True
        return self.usage()

    def hit_limit(self) -> None:
        """The call allocated up to its grant and the kernel holds it there."""
        self.peak = self.limits.memory_max
        self.held = True


class FakeController:
    name = "fake"
    reason = "test double"

    def __init__(self, features=("memory", "hold", "notify")) -> None:
        self.features = frozenset(features)
        self.groups: dict[str, FakeGroup] = {}

    def create(self, call_id: str, limits, parent=None) -> FakeGroup:
        self.groups[call_id] = FakeGroup(self, call_id, limits)
        return self.groups[call_id]

    def close(self) -> None:
        pass


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.001  # every reading is a millisecond later: reactions are measurable
        return self.now


@pytest.fixture
def fake_controller() -> FakeController:
    return FakeController()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake_controller_class() -> type[FakeController]:
    return FakeController
