"""Choose the backend this host allows, and sweep away what a crashed run left behind.

Order: cgroup v2 (memory delegated to our own cgroup), cgroup v1 (a writable memory hierarchy),
else the rlimit + polling fallback. Nothing is assumed from the distribution: each step is
tried, and the reason names what was found. `HETAGENT_RESOURCE_CONTROLLER` forces a backend
(cgroup-v2, cgroup-v1 or fallback); forcing one the host cannot provide is an error.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import weakref
from pathlib import Path

from .base import (
    CgroupFs,
    Controller,
    ResourceError,
    owner_alive,
    owner_tag,
    read_pids,
    signal_pids,
    wait_gone,
    write_file,
)
from .cgroup_v1 import V1Controller
from .cgroup_v2 import WANTED, V2Controller
from .fallback import FallbackController
from .hierarchy import Hierarchy, hierarchies

ENV = "HETAGENT_RESOURCE_CONTROLLER"
NAMES = ("cgroup-v2", "cgroup-v1", "fallback")
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer")
_swept: set[str] = set()


def _errno_text(exc: OSError) -> str:
    return os.strerror(exc.errno or 0).lower()


def _try_v2(hs: list[Hierarchy], fs: CgroupFs) -> tuple[V2Controller | None, str]:
    unified = next((h for h in hs if h.version == 2), None)
    if unified is None:
        return None, "no cgroup2 mount"
    if "memory" not in unified.controllers:
        shown = " ".join(sorted(unified.controllers)) or "none"
        return None, f"cgroup2 at {unified.mount} delegates no memory controller to us ({shown})"
    wanted = [c for c in WANTED if c in unified.controllers]
    subtree = unified.own / "cgroup.subtree_control"
    probe = unified.own / owner_tag()
    made = False
    try:
        enabled = set(subtree.read_text().split())
        if "memory" not in enabled:
            write_file(subtree, " ".join(f"+{c}" for c in wanted))
        if not probe.is_dir():
            fs.mkdir(probe)
            made = True
        write_file(probe / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
    except (OSError, ResourceError) as exc:
        if made:
            fs.rmdir(probe)
        return None, f"cgroup2 group {unified.own} is not delegated to us ({exc})"
    available = frozenset(wanted)
    reason = f"cgroup v2 at {unified.own} with {', '.join(wanted)} delegated"
    return V2Controller(unified.own, fs, available=available, reason=reason), reason


def _try_v1(hs: list[Hierarchy], fs: CgroupFs) -> tuple[V1Controller | None, str]:
    owners: dict[str, Path] = {}
    skipped: list[str] = []
    for name in V1_CONTROLLERS:
        h = next((h for h in hs if h.version == 1 and name in h.controllers), None)
        if h is None:
            skipped.append(f"{name} not mounted")
            continue
        probe = h.own / owner_tag()
        try:
            if not probe.is_dir():
                fs.mkdir(probe)
        except OSError as exc:
            skipped.append(f"{name} at {h.own} not writable ({_errno_text(exc)})")
            continue
        owners[name] = h.own
    if "memory" not in owners:
        return None, "cgroup v1: " + "; ".join(skipped)
    if not (owners["memory"] / "memory.oom_control").exists():
        return None, f"cgroup v1 memory at {owners['memory']} has no memory.oom_control"
    reason = f"cgroup v1: memory at {owners['memory']} (hold via oom_kill_disable, eventfd)"
    others = [n for n in V1_CONTROLLERS[1:] if n in owners]
    if others:
        reason += "; " + ", ".join(others)
    if skipped:
        reason += "; " + "; ".join(skipped)
    return V1Controller(owners, fs, reason=reason), reason


def detect_controller(root: Path | str | None = None, fs: CgroupFs | None = None) -> Controller:
    """The best backend this host allows. `root` stands for "/" (a fake tree in tests)."""
    fs = fs or CgroupFs()
    forced = os.environ.get(ENV, "").strip()
    if forced and forced not in NAMES:
        raise ResourceError(f"{ENV}={forced!r} must be one of {', '.join(NAMES)}")
    hs = hierarchies(root)
    key = str(root or "/")
    if key not in _swept:
        _swept.add(key)
        sweep(root, fs, hs)
    notes: list[str] = []
    controller: Controller | None = None
    for name, attempt in (("cgroup-v2", _try_v2), ("cgroup-v1", _try_v1)):
        if forced and forced != name:
            continue
        controller, why = attempt(hs, fs)
        if controller is not None:
            if notes:
                controller.reason += f" (not v2: {notes[0]})"
            break
        notes.append(why)
        if forced:
            raise ResourceError(f"{ENV}={forced} is not usable here: {why}")
    if controller is None and forced == "fallback":
        controller = FallbackController(reason=f"forced by {ENV}=fallback: rlimit + polling")
    elif controller is None:
        shown = "; ".join(notes)
        controller = FallbackController(reason=f"no writable cgroup ({shown}): rlimit + polling")
    atexit.register(_close_at_exit, weakref.ref(controller))
    return controller


def _close_at_exit(ref: weakref.ref[Controller]) -> None:
    controller = ref()
    if controller is None:
        return
    try:
        controller.close()
    except (OSError, ResourceError) as exc:
        print(f"hetagent: could not remove resource groups at exit: {exc}", file=sys.stderr)


def _remove_tree(path: Path, fs: CgroupFs) -> None:
    """Remove a leftover group bottom-up, ending whatever still runs in it."""
    for child in sorted((p for p in path.iterdir() if p.is_dir()), reverse=True):
        _remove_tree(child, fs)
    if (path / "freezer.state").exists():
        write_file(path / "freezer.state", "THAWED")  # frozen tasks only die once thawed
    if (path / "cgroup.freeze").exists():
        write_file(path / "cgroup.freeze", "0")
    pids = read_pids(path / "cgroup.procs")
    if pids:
        signal_pids(pids, signal.SIGKILL)
        wait_gone(pids)
    fs.rmdir(path)


def sweep(
    root: Path | str | None = None,
    fs: CgroupFs | None = None,
    hs: list[Hierarchy] | None = None,
) -> list[Path]:
    """Remove `hetagent-<pid>-<start>` groups beneath our own cgroups whose owner has died.

    Groups of a live owner (another agent process on this host, or this one) are kept."""
    fs = fs or CgroupFs()
    removed: list[Path] = []
    for h in hs if hs is not None else hierarchies(root):
        try:
            children = [p for p in h.own.iterdir() if p.is_dir()]
        except OSError:
            continue  # not readable: nothing of ours can be there
        for path in children:
            if owner_alive(path.name) is False:
                _remove_tree(path, fs)
                removed.append(path)
    return removed
