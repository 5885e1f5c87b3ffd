"""Where this process's cgroups are: the mounted hierarchies and our own group in each.

Read from `/proc/self/mountinfo` and `/proc/self/cgroup` under `root` (a tmp dir in tests that is
laid out like `/`), so the backends never guess a path such as `/sys/fs/cgroup/memory`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Hierarchy:
    version: int
    """1 or 2."""
    controllers: frozenset[str]
    """v1: the controllers bound to this mount; v2: those listed in our cgroup.controllers."""
    mount: Path
    """The mount point (under `root`)."""
    own: Path
    """Our own cgroup's directory in this hierarchy: we create groups only beneath it."""


def _unescape(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


def hierarchies(root: Path | str | None = None) -> list[Hierarchy]:
    """The cgroup hierarchies mounted for this process, each with our own group in it."""
    base = Path(root or "/")
    proc = base / "proc/self"
    try:
        mountinfo = (proc / "mountinfo").read_text().splitlines()
        membership = (proc / "cgroup").read_text().splitlines()
    except FileNotFoundError:
        return []
    own_v1: dict[frozenset[str], str] = {}
    own_v2: str | None = None
    for line in membership:
        hid, _, rest = line.partition(":")
        names, _, path = rest.partition(":")
        if hid == "0" and names == "":
            own_v2 = path
        elif names:
            own_v1[frozenset(names.split(","))] = path
    found: list[Hierarchy] = []
    for line in mountinfo:
        left, _, right = line.partition(" - ")
        fields, sfields = left.split(), right.split()
        if len(fields) < 5 or len(sfields) < 3:
            continue
        mount_root, mount_point, fstype = _unescape(fields[3]), _unescape(fields[4]), sfields[0]
        mount = base / mount_point.lstrip("/")
        if fstype == "cgroup":
            controllers = frozenset(
                o for o in sfields[2].split(",") if o not in {"rw", "ro"} and "=" not in o
            )
            names = frozenset(o for o in sfields[2].split(",") if o.startswith("name="))
            own_path = own_v1.get(controllers | names)
            if not controllers or own_path is None:
                continue
            own = _own_dir(mount, mount_root, own_path)
            if own is not None:
                found.append(Hierarchy(1, controllers, mount, own))
        elif fstype == "cgroup2" and own_v2 is not None:
            own = _own_dir(mount, mount_root, own_v2)
            if own is not None:
                try:
                    available = frozenset((own / "cgroup.controllers").read_text().split())
                except FileNotFoundError:
                    available = frozenset()
                found.append(Hierarchy(2, available, mount, own))
    return found


def _own_dir(mount: Path, mount_root: str, own_path: str) -> Path | None:
    """Our group's directory, when the mount shows it (a container may mount a subtree)."""
    mount_root = mount_root.rstrip("/") or "/"
    if mount_root == "/":
        rel = own_path.lstrip("/")
    elif own_path == mount_root or own_path.startswith(mount_root + "/"):
        rel = own_path[len(mount_root) :].lstrip("/")
    else:
        return None
    own = mount / rel if rel else mount
    return own if own.is_dir() else None
