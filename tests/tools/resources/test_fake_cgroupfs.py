"""Each cgroup backend against a fake cgroupfs laid out as the kernel lays it out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hetagent.tools.resources import ENV, Limits, ResourceError, sweep
from hetagent.tools.resources.base import owner_tag, start_time
from hetagent.tools.resources.cgroup_v2 import kill_slack

MiB = 1 << 20


def registered(path: Path) -> str:
    return (path / "cgroup.event_control").read_text()


# --- cgroup v1 ----------------------------------------------------------------------------------


def test_v1_is_chosen_when_cgroup2_delegates_no_memory(v1_host):
    ctl = v1_host.detect()
    assert ctl.name == "cgroup-v1"
    assert "delegates no memory controller" in ctl.reason
    assert {"memory", "hold", "notify", "cpu", "pids", "freeze"} <= ctl.features


def test_v1_group_is_created_beneath_our_own_cgroup_in_every_hierarchy(v1_host, my_tag):
    group = v1_host.detect().create("call-1", Limits(memory_max=64 * MiB))
    for name in ("memory", "cpu", "cpuacct", "pids", "freezer"):
        assert group.dirs[name] == v1_host.own[name] / my_tag / "call-1"
        assert group.dirs[name].is_dir()
    assert group.dirs["memory"].is_relative_to(v1_host.root / "sys/fs/cgroup/memory/process_api")


def test_v1_limits_hold_at_memory_limit_with_oom_notification(v1_host):
    group = v1_host.detect().create(
        "c", Limits(memory_max=64 * MiB, memory_high=48 * MiB, cpu_cores=0.5, pids=64)
    )
    mem = group.dirs["memory"]
    assert (mem / "memory.oom_control").read_text() == "1"  # oom_kill_disable: hold, not kill
    assert (mem / "memory.limit_in_bytes").read_text() == str(64 * MiB)
    assert (mem / "memory.memsw.limit_in_bytes").read_text() == str(64 * MiB)
    assert (group.dirs["cpu"] / "cpu.cfs_quota_us").read_text() == "50000"
    assert (group.dirs["cpu"] / "cpu.cfs_period_us").read_text() == "100000"
    assert (group.dirs["pids"] / "pids.max").read_text() == "64"
    # The last registration is the usage threshold at memory_high: "<eventfd> <fd> <bytes>".
    _efd, cfd, threshold = registered(mem).split()
    assert threshold == str(48 * MiB)
    assert os.readlink(f"/proc/self/fd/{cfd}").endswith("memory.usage_in_bytes")


def test_v1_oom_kill_limit_lets_the_kernel_kill(v1_host):
    group = v1_host.detect().create("c", Limits(memory_max=64 * MiB, oom_kill=True))
    assert (group.dirs["memory"] / "memory.oom_control").read_text() == "0"


def test_v1_growing_the_limit_rewrites_it(v1_host):
    group = v1_host.detect().create("c", Limits(memory_max=64 * MiB, pids=10))
    group.set_limits(Limits(memory_max=256 * MiB, pids=None))
    assert (group.dirs["memory"] / "memory.limit_in_bytes").read_text() == str(256 * MiB)
    assert (group.dirs["memory"] / "memory.memsw.limit_in_bytes").read_text() == str(256 * MiB)
    assert (group.dirs["pids"] / "pids.max").read_text() == "max"


def test_v1_events_and_usage_are_parsed_from_kernel_files(v1_host):
    group = v1_host.detect().create("c", Limits(memory_max=64 * MiB))
    mem, cpu = group.dirs["memory"], group.dirs["cpu"]
    (mem / "memory.oom_control").write_text("oom_kill_disable 1\nunder_oom 1\noom_kill 2\n")
    (mem / "memory.failcnt").write_text("7\n")
    (mem / "memory.usage_in_bytes").write_text(f"{64 * MiB}\n")
    (mem / "memory.max_usage_in_bytes").write_text(f"{64 * MiB}\n")
    (cpu / "cpu.stat").write_text("nr_periods 10\nnr_throttled 3\nthrottled_time 99\n")
    (group.dirs["pids"] / "pids.events").write_text("max 4\n")
    (group.dirs["cpuacct"] / "cpuacct.usage").write_text("1500000000\n")
    events = group.events()
    assert events.held and events.oom >= 1
    assert (events.max, events.oom_kill, events.cpu_throttled, events.pids_max) == (7, 2, 3, 4)
    usage = group.usage()
    assert (usage.memory_current, usage.memory_peak) == (64 * MiB, 64 * MiB)
    assert usage.cpu_seconds == pytest.approx(1.5)


def test_v1_preexec_joins_every_hierarchy_before_exec(v1_host):
    group = v1_host.detect().create("c", Limits(memory_max=64 * MiB))
    proc = subprocess.Popen([sys.executable, "-c", "pass"], preexec_fn=group.preexec)
    proc.wait()
    for path in group.dirs.values():
        assert (path / "cgroup.procs").read_text() == str(proc.pid)
        (path / "cgroup.procs").write_text("")  # the kernel drops an exited task


def test_v1_close_removes_the_group_and_controller_close_its_parent(v1_host, my_tag):
    ctl = v1_host.detect()
    group = ctl.create("c", Limits(memory_max=64 * MiB, memory_high=32 * MiB))
    (group.dirs["memory"] / "memory.max_usage_in_bytes").write_text(str(40 * MiB))
    final = group.close()
    assert final.memory_peak == 40 * MiB
    assert group.close() == final  # idempotent
    assert not any(p.exists() for p in group.dirs.values())
    ctl.close()
    assert not any((own / my_tag).exists() for own in v1_host.own.values())


def test_v1_freeze_and_thaw_write_freezer_state(v1_host):
    group = v1_host.detect().create("c", Limits())
    group.freeze()
    assert (group.dirs["freezer"] / "freezer.state").read_text() == "FROZEN"
    group.thaw()
    assert (group.dirs["freezer"] / "freezer.state").read_text() == "THAWED"


def test_kill_ends_the_call_but_never_this_process_or_its_parent(v1_host):
    group = v1_host.detect().create("c", Limits(memory_max=64 * MiB))
    tool = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    procs = group.dirs["memory"] / "cgroup.procs"
    procs.write_text(f"{os.getpid()}\n{os.getppid()}\n{tool.pid}\n")
    group.kill()
    assert tool.wait() == -9
    assert start_time(os.getpid()) is not None and start_time(os.getppid()) is not None


def test_a_call_id_that_could_escape_the_group_is_refused(v1_host):
    ctl = v1_host.detect()
    for bad in ("../x", "a/b", "", ".."):
        with pytest.raises(ResourceError, match="call id"):
            ctl.create(bad, Limits())
    ctl.create("same", Limits())
    with pytest.raises(ResourceError, match="already running"):
        ctl.create("same", Limits())


def test_nested_groups_live_inside_their_parent(v1_host):
    ctl = v1_host.detect()
    agent = ctl.create("agent-1", Limits(memory_max=512 * MiB))
    tool = ctl.create("call-1", Limits(memory_max=128 * MiB), parent=agent)
    assert tool.dirs["memory"].parent == agent.dirs["memory"]
    agent.close()  # closes its children first
    assert not tool.dirs["memory"].exists() and not agent.dirs["memory"].exists()


# --- sweep --------------------------------------------------------------------------------------


def _leftover(v1_host, name: str) -> Path:
    path = v1_host.own["memory"] / name
    v1_host.kernel.mkdir(path)
    v1_host.kernel.mkdir(path / "call-7")
    return path


def test_sweep_removes_groups_of_dead_owners_and_keeps_live_ones(v1_host, dead_pid):
    dead = _leftover(v1_host, f"hetagent-{dead_pid}-12345")
    reused = _leftover(v1_host, f"hetagent-{os.getpid()}-1")  # our pid, another start time
    live = _leftover(v1_host, owner_tag(os.getppid()))
    foreign = _leftover(v1_host, "someone-elses-group")
    removed = sweep(v1_host.root, v1_host.kernel)
    assert set(removed) == {dead, reused}
    assert not dead.exists() and not reused.exists()
    assert live.exists() and foreign.exists()


def test_detect_sweeps_leftovers_once_at_start_up(v1_host, dead_pid):
    dead = _leftover(v1_host, f"hetagent-{dead_pid}-12345")
    v1_host.detect()
    assert not dead.exists()


# --- cgroup v2 ----------------------------------------------------------------------------------


def test_v2_is_chosen_where_memory_is_delegated(v2_host, my_tag):
    ctl = v2_host.detect()
    assert ctl.name == "cgroup-v2"
    assert {"memory", "cpu", "pids", "freeze"} <= ctl.features
    group = ctl.create("call-1", Limits(memory_max=64 * MiB))
    parent = v2_host.own["unified"] / my_tag
    assert group.dirs["unified"] == parent / "call-1"
    assert (parent / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"


def test_v2_throttles_at_the_grant_and_kills_only_past_a_slack(v2_host):
    group = v2_host.detect().create("c", Limits(memory_max=64 * MiB, cpu_cores=1.5, pids=32))
    d = group.dirs["unified"]
    assert (d / "memory.high").read_text() == str(64 * MiB)
    assert (d / "memory.max").read_text() == str(64 * MiB + kill_slack(64 * MiB))
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "memory.oom.group").read_text() == "1"
    assert (d / "cpu.max").read_text() == "150000 100000"
    assert (d / "pids.max").read_text() == "32"


def test_v2_oom_kill_limit_is_memory_max(v2_host):
    group = v2_host.detect().create("c", Limits(memory_max=64 * MiB, oom_kill=True))
    d = group.dirs["unified"]
    assert (d / "memory.max").read_text() == str(64 * MiB)
    assert (d / "memory.high").read_text() == "max"


def test_v2_events_and_usage_are_parsed_from_kernel_files(v2_host):
    group = v2_host.detect().create("c", Limits(memory_max=64 * MiB))
    d = group.dirs["unified"]
    (d / "memory.events").write_text("low 0\nhigh 12\nmax 1\noom 1\noom_kill 1\n")
    (d / "memory.current").write_text(str(64 * MiB))
    (d / "memory.peak").write_text(str(70 * MiB))
    (d / "cpu.stat").write_text("usage_usec 2500000\nnr_periods 9\nnr_throttled 5\n")
    (d / "pids.events").write_text("max 2\n")
    events = group.events()
    assert events.held  # at memory.high: throttled
    assert (events.high, events.max, events.oom, events.oom_kill) == (12, 1, 1, 1)
    assert (events.cpu_throttled, events.pids_max) == (5, 2)
    usage = group.usage()
    assert (usage.memory_current, usage.memory_peak) == (64 * MiB, 70 * MiB)
    assert usage.cpu_seconds == pytest.approx(2.5)


def test_v2_freeze_kill_and_close(v2_host, my_tag):
    ctl = v2_host.detect()
    group = ctl.create("c", Limits(memory_max=64 * MiB))
    d = group.dirs["unified"]
    group.freeze()
    assert (d / "cgroup.freeze").read_text() == "1"
    group.thaw()
    assert (d / "cgroup.freeze").read_text() == "0"
    tool = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    (d / "cgroup.procs").write_text(str(tool.pid))
    group.kill()
    assert (d / "cgroup.kill").read_text() == "1"
    assert tool.wait() == -9
    (d / "cgroup.procs").write_text("")
    group.close()
    ctl.close()
    assert not (v2_host.own["unified"] / my_tag).exists()


def test_v2_undelegated_group_falls_back_with_the_reason(v2_host):
    (v2_host.own["unified"] / "cgroup.controllers").write_text("cpu")
    ctl = v2_host.detect()
    assert ctl.name == "fallback"
    assert "delegates no memory controller" in ctl.reason


# --- choosing -----------------------------------------------------------------------------------


def test_no_cgroup_mounts_means_the_fallback(tmp_path):
    from hetagent.tools.resources import detect_controller

    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mountinfo").write_text("")
    (tmp_path / "proc/self/cgroup").write_text("0::/\n")
    ctl = detect_controller(tmp_path)
    assert ctl.name == "fallback" and "no writable cgroup" in ctl.reason


def test_forcing_a_backend_by_environment(v1_host, monkeypatch):
    monkeypatch.setenv(ENV, "fallback")
    assert v1_host.detect().name == "fallback"
    monkeypatch.setenv(ENV, "cgroup-v2")
    with pytest.raises(ResourceError, match="not usable here"):
        v1_host.detect()
    monkeypatch.setenv(ENV, "cgroups")
    with pytest.raises(ResourceError, match="must be one of"):
        v1_host.detect()
