"""What the cgroup v1 and v2 backends share: a group is one directory per hierarchy, created
beneath `<own cgroup>/hetagent-<pid>-<start>/`, joined before exec, removed on close."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from .base import (
    SIGKILL,
    CgroupFs,
    Controller,
    Limits,
    ResourceError,
    ResourceGroup,
    Usage,
    check_call_id,
    owner_tag,
    protected_pids,
    read_pids,
    running,
    signal_pids,
    wait_gone,
)


class CgroupGroup(ResourceGroup):
    """A group with one directory per hierarchy it uses (`dirs`: key -> path)."""

    def __init__(
        self,
        controller: CgroupController,
        call_id: str,
        limits: Limits,
        dirs: dict[str, Path],
        parent: CgroupGroup | None,
    ) -> None:
        super().__init__(call_id, limits)
        self.controller = controller
        self.dirs = dirs
        self.parent = parent
        self.children: list[CgroupGroup] = []
        self._final: Usage | None = None
        # Distinct directories to join, as bytes, computed now: preexec runs after fork.
        self._procs_files = [os.fsencode(d / "cgroup.procs") for d in dict.fromkeys(dirs.values())]

    def preexec(self) -> None:
        pid = str(os.getpid()).encode()
        for path in self._procs_files:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def pids(self) -> list[int]:
        seen: set[int] = set()
        for d in dict.fromkeys(self.dirs.values()):
            seen.update(read_pids(d / "cgroup.procs"))
        for child in self.children:
            if not child.closed:
                seen.update(child.pids())
        return sorted(seen)

    def kill(self) -> None:
        safe = protected_pids()
        for _ in range(20):
            # Never the agent's own runtime; an exited task may linger in the list a moment.
            pids = [p for p in self.pids() if p not in safe and running(p)]
            if not pids:
                return
            signal_pids(pids, SIGKILL)
            self._after_kill_signal()
            wait_gone(pids, attempts=40)
        if [p for p in self.pids() if p not in safe and running(p)]:
            raise ResourceError(f"processes of tool call {self.call_id} survived SIGKILL")

    def _after_kill_signal(self) -> None:
        """Backends release holds (thaw) so killed processes can run their exit."""

    def close(self) -> Usage:
        if self._final is not None:
            return self._final
        for child in list(self.children):
            child.close()
        try:
            final = self.usage()
        except (OSError, ValueError):
            final = Usage()
        self.kill()
        self._release()
        errors = []
        for d in dict.fromkeys(self.dirs.values()):
            try:
                self.controller.fs.rmdir(d)
            except OSError as exc:
                errors.append(f"{d}: {os.strerror(exc.errno or 0)}")
        self._final = final
        self.closed = True
        if self.parent is not None and self in self.parent.children:
            self.parent.children.remove(self)
        self.controller.forget(self)
        if errors:
            raise ResourceError(f"cannot remove cgroup of tool call {self.call_id}: {errors[0]}")
        return final

    def _release(self) -> None:
        """Close backend file descriptors."""


class CgroupController(Controller):
    """Creates `CgroupGroup`s in `owners` (key -> our own cgroup dir for that hierarchy)."""

    group_class: type[CgroupGroup]

    def __init__(self, owners: dict[str, Path], fs: CgroupFs | None = None) -> None:
        super().__init__()
        self.owners = owners
        self.fs = fs or CgroupFs()
        self._tag = owner_tag()
        self._lock = threading.Lock()
        self._live: dict[str, CgroupGroup] = {}

    def parent_dirs(self) -> dict[str, Path]:
        """This process's parent group in each hierarchy (created on first use)."""
        return {key: own / self._tag for key, own in self.owners.items()}

    def _ensure_parents(self) -> None:
        for path in self.parent_dirs().values():
            if not path.is_dir():  # another controller of this process may have removed it
                self.fs.mkdir(path)
                self._setup_parent(path)

    def _setup_parent(self, path: Path) -> None:
        """Backend-specific preparation of our parent group (v2 enables controllers)."""

    def create(
        self, call_id: str, limits: Limits, parent: ResourceGroup | None = None
    ) -> CgroupGroup:
        check_call_id(call_id)
        if parent is not None and not isinstance(parent, CgroupGroup):
            raise ResourceError("a parent group must come from the same cgroup controller")
        with self._lock:
            key = call_id if parent is None else f"{parent.call_id}/{call_id}"
            if key in self._live:
                raise ResourceError(f"tool call id {call_id!r} is already running")
            self._ensure_parents()
            bases = self.parent_dirs() if parent is None else parent.dirs
            dirs = {k: base / call_id for k, base in bases.items()}
            made: list[Path] = []
            try:
                for d in dict.fromkeys(dirs.values()):
                    self.fs.mkdir(d)
                    made.append(d)
                group = self.group_class(self, call_id, limits, dirs, parent)
                group.setup()
            except (OSError, ResourceError) as exc:
                for d in reversed(made):
                    with contextlib.suppress(OSError):  # undoing; the first error is raised
                        self.fs.rmdir(d)
                if isinstance(exc, ResourceError):
                    raise
                raise ResourceError(
                    f"cannot create cgroup for tool call {call_id}: {os.strerror(exc.errno or 0)}"
                ) from exc
            self._live[key] = group
            if parent is not None:
                parent.children.append(group)
            return group

    def forget(self, group: CgroupGroup) -> None:
        with self._lock:
            for key, value in list(self._live.items()):
                if value is group:
                    del self._live[key]

    def close(self) -> None:
        for group in list(self._live.values()):
            if group.parent is None:
                group.close()
        for path in dict.fromkeys(self.parent_dirs().values()):
            if not path.is_dir() or any(p.is_dir() for p in path.iterdir()):
                continue  # gone, or still holding groups of another controller of ours
            # Raced with a new group: the start-up sweep of a later run removes it.
            with contextlib.suppress(OSError):
                self.fs.rmdir(path)
