"""The backends on this host's kernel: real processes allocating real memory.

Cgroup tests run where the host allows the backend (they skip with the host's reason otherwise);
the fallback runs everywhere. Every wait is bounded by a generous timeout and asserts a
behaviour, never a duration.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

from hetagent.tools.resources import Limits
from hetagent.tools.resources.base import owner_tag, start_time
from hetagent.tools.resources.fallback import FallbackController

MiB = 1 << 20
BOUND = 60.0  # seconds: only a failure ever waits this long

ALLOCATE = """
import sys
chunks = []
for _ in range(int(sys.argv[1])):
    chunks.append(bytearray(1 << 20))  # zero-filled: every page touched
print("done", flush=True)
"""


def spawn(group, megabytes: int, **kwargs) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-S", "-c", ALLOCATE, str(megabytes)],
        preexec_fn=group.preexec,
        stdout=subprocess.PIPE,
        text=True,
        **kwargs,
    )
    group.started(proc.pid)
    return proc


def wait_for(group, condition) -> None:
    """Wait on the group's notification fd until `condition(events)` holds."""
    poller = select.epoll()
    poller.register(group.notify_fd(), select.EPOLLIN | select.EPOLLPRI)
    try:
        for _ in range(int(BOUND / 0.1)):
            if condition(group.events()):
                return
            poller.poll(0.1)
        raise AssertionError(f"no such event from {group.call_id}: {group.events()}")
    finally:
        poller.close()


def state(pid: int) -> str:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2]


def our_groups(controller) -> list[Path]:
    tag = owner_tag()
    return [d / tag for d in getattr(controller, "owners", {}).values() if (d / tag).exists()]


def assert_agent_alive() -> None:
    assert start_time(os.getpid()) is not None
    assert start_time(os.getppid()) is not None


# --- cgroup v1 ----------------------------------------------------------------------------------


def test_v1_call_past_its_limit_is_held_not_killed_and_resumes_when_grown(
    real_controller, require_backend
):
    require_backend(real_controller, "cgroup-v1", "hold", "notify")
    group = real_controller.create("held", Limits(memory_max=48 * MiB))
    proc = spawn(group, 128)
    wait_for(group, lambda e: e.held)
    assert proc.poll() is None and state(proc.pid) == "D"  # sleeping at the limit, no CPU
    held = group.usage()
    assert held.memory_current <= 48 * MiB and held.memory_peak <= 48 * MiB  # no overshoot
    group.set_limits(Limits(memory_max=256 * MiB))
    out, _ = proc.communicate(timeout=BOUND)
    assert (proc.returncode, out) == (0, "done\n")
    final = group.close()
    assert final.memory_peak >= 128 * MiB and final.cpu_seconds > 0
    assert not any(p.exists() for p in group.dirs.values())
    assert_agent_alive()


def test_v1_usage_threshold_notifies_at_memory_high(real_controller, require_backend):
    require_backend(real_controller, "cgroup-v1", "notify")
    group = real_controller.create("high", Limits(memory_max=256 * MiB, memory_high=24 * MiB))
    proc = spawn(group, 48)
    wait_for(group, lambda e: e.high >= 1)
    assert proc.wait(timeout=BOUND) == 0
    group.close()


def test_v1_oom_kill_limit_kills_the_call_and_spares_the_agent(real_controller, require_backend):
    require_backend(real_controller, "cgroup-v1")
    group = real_controller.create("killed", Limits(memory_max=32 * MiB, oom_kill=True))
    proc = spawn(group, 128)
    assert proc.wait(timeout=BOUND) == -9
    assert group.events().oom_kill >= 1
    group.close()
    assert_agent_alive()


def test_v1_held_call_can_be_killed_and_leaves_no_cgroup(real_controller, require_backend):
    require_backend(real_controller, "cgroup-v1", "hold")
    group = real_controller.create("stuck", Limits(memory_max=32 * MiB))
    proc = spawn(group, 128)
    wait_for(group, lambda e: e.held)
    group.kill()
    assert proc.wait(timeout=BOUND) == -9
    group.close()
    real_controller.close()
    assert our_groups(real_controller) == []
    assert_agent_alive()


def test_v1_freeze_parks_and_thaw_resumes(real_controller, require_backend):
    require_backend(real_controller, "cgroup-v1", "freeze")
    group = real_controller.create("park", Limits(memory_max=64 * MiB))
    proc = subprocess.Popen(
        [sys.executable, "-S", "-c", "import sys; sys.stdin.read(); print('ok')"],
        preexec_fn=group.preexec,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    group.started(proc.pid)
    group.freeze()
    assert (group.dirs["freezer"] / "freezer.state").read_text().strip() == "FROZEN"
    group.thaw()
    out, _ = proc.communicate("", timeout=BOUND)
    assert out == "ok\n"
    group.close()


def test_v1_pids_limit_refuses_a_fork_storm(real_controller, require_backend):
    require_backend(real_controller, "cgroup-v1", "pids")
    group = real_controller.create("forks", Limits(pids=8))
    storm = (
        "import os\nrefused = 0\nfor _ in range(32):\n"
        "    try:\n        pid = os.fork()\n    except OSError:\n        refused += 1\n"
        "        continue\n    if pid == 0:\n        os.read(0, 1); os._exit(0)\n"
        "print(refused, flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-S", "-c", storm],
        preexec_fn=group.preexec,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    group.started(proc.pid)
    refused = int(proc.stdout.readline())
    assert refused >= 32 - 8 and group.events().pids_max >= 1
    proc.stdin.close()  # the children exit on EOF
    proc.wait(timeout=BOUND)
    group.close()  # kills any child still alive
    assert not any(p.exists() for p in group.dirs.values())


def test_v1_cpu_quota_throttles_a_busy_call(real_controller, require_backend):
    require_backend(real_controller, "cgroup-v1", "cpu")
    group = real_controller.create("busy", Limits(cpu_cores=0.05))
    proc = subprocess.Popen(
        [sys.executable, "-S", "-c", "while True: pass"], preexec_fn=group.preexec
    )
    group.started(proc.pid)
    for _ in range(int(BOUND / 0.05)):
        if group.events().cpu_throttled > 0:
            break
        select.select([], [], [], 0.05)  # until the next CFS period has been accounted
    assert group.events().cpu_throttled > 0
    group.close()
    assert proc.wait(timeout=BOUND) == -9


# --- fallback (every host) ----------------------------------------------------------------------


@pytest.fixture
def fallback():
    controller = FallbackController(interval=0.005)
    yield controller
    controller.close()


def test_fallback_parks_a_call_at_its_limit_with_sigstop_and_resumes_it(fallback):
    group = fallback.create("poll", Limits(memory_max=64 * MiB))
    proc = spawn(group, 160)
    wait_for(group, lambda e: e.held)
    assert proc.poll() is None and state(proc.pid) == "T"  # stopped, not killed
    assert group.usage().memory_peak >= 64 * MiB
    group.set_limits(Limits(memory_max=512 * MiB))
    out, _ = proc.communicate(timeout=BOUND)
    assert (proc.returncode, out) == (0, "done\n")
    final = group.close()
    assert final.memory_peak >= 160 * MiB
    assert_agent_alive()


def test_fallback_data_rlimit_is_set_before_exec(fallback):
    group = fallback.create("rl", Limits(memory_max=64 * MiB))
    show = "import resource; print(resource.getrlimit(resource.RLIMIT_DATA)[0])"
    proc = subprocess.Popen(
        [sys.executable, "-S", "-c", show],
        preexec_fn=group.preexec,
        stdout=subprocess.PIPE,
        text=True,
    )
    group.started(proc.pid)
    out, _ = proc.communicate(timeout=BOUND)
    assert int(out) == 2 * 64 * MiB + 256 * MiB
    group.close()


def test_fallback_kill_ends_the_whole_process_tree_but_not_the_agent(fallback):
    group = fallback.create("tree", Limits(memory_max=512 * MiB))
    tree = "import subprocess, sys, time\nsubprocess.Popen(['sleep', '600'])\ntime.sleep(600)\n"
    proc = subprocess.Popen([sys.executable, "-S", "-c", tree], preexec_fn=group.preexec)
    group.started(proc.pid)
    for _ in range(int(BOUND / 0.01)):
        fallback.poll_once()
        if len(group.pids()) >= 2:
            break
        select.select([], [], [], 0.01)
    children = group.pids()
    assert len(children) >= 2
    group.kill()
    assert proc.wait(timeout=BOUND) == -9
    assert all(state(p) == "Z" for p in children if Path(f"/proc/{p}").exists())
    group.close()
    assert_agent_alive()


def test_fallback_oom_kill_limit_kills_the_call(fallback):
    group = fallback.create("k", Limits(memory_max=48 * MiB, oom_kill=True))
    proc = spawn(group, 256)
    assert proc.wait(timeout=BOUND) == -9
    assert group.events().oom_kill >= 1
    group.close()


# --- cgroup v2 (runs where memory is delegated to our cgroup) -----------------------------------


def test_v2_call_past_its_grant_is_throttled_then_frozen_not_killed(
    real_controller, require_backend
):
    require_backend(real_controller, "cgroup-v2", "freeze")
    group = real_controller.create("v2held", Limits(memory_max=48 * MiB))
    proc = spawn(group, 128)
    wait_for(group, lambda e: e.high >= 1)  # memory.events: throttled at memory.high
    group.freeze()  # what the broker does when the pool is empty
    assert proc.poll() is None and group.events().oom_kill == 0
    group.set_limits(Limits(memory_max=256 * MiB))
    group.thaw()
    out, _ = proc.communicate(timeout=BOUND)
    assert (proc.returncode, out) == (0, "done\n")
    final = group.close()
    assert final.memory_peak >= 128 * MiB
    assert not group.dirs["unified"].exists()
    assert_agent_alive()


def test_v2_kill_ends_every_process_of_the_call(real_controller, require_backend):
    require_backend(real_controller, "cgroup-v2")
    group = real_controller.create("v2kill", Limits(memory_max=256 * MiB, pids=16))
    tree = "import subprocess, time\nsubprocess.Popen(['sleep', '600'])\ntime.sleep(600)\n"
    proc = subprocess.Popen([sys.executable, "-S", "-c", tree], preexec_fn=group.preexec)
    group.started(proc.pid)
    group.kill()
    assert proc.wait(timeout=BOUND) == -9
    group.close()
    real_controller.close()
    assert our_groups(real_controller) == []
    assert_agent_alive()
