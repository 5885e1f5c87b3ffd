"""A tool call that tries to escape its workspace or exhaust the host is contained and reported."""

import os
import socket
from pathlib import Path

import pytest

from hetagent.tools import sandbox as sb
from hetagent.tools.registry import ToolContext
from hetagent.tools.sandbox import CallLimits, PathEscape, Sandbox


def _gone(pid: int) -> bool:
    """Dead or a zombie (killed, waiting to be reaped by init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def _pids_bounded() -> bool:
    return "pids" in sb.controller().features or sb.nproc_enforced()


needs_pids_limit = pytest.mark.skipif(
    not _pids_bounded(),
    reason="root without a pids controller: RLIMIT_NPROC does not apply to root",
)


# -- paths -----------------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the workspace\n")
    return secret


def test_files_read_rejects_parent_traversal(registry, ctx, outside):
    result = registry.call("files.read", {"path": "../secret.txt"}, ctx)
    assert not result.ok
    assert "outside the workspace" in result.error
    assert "outside the workspace" not in result.stdout


def test_files_read_rejects_traversal_hidden_in_a_deeper_path(registry, ctx, workspace, outside):
    (workspace / "sub").mkdir()
    result = registry.call("files.read", {"path": "sub/../../secret.txt"}, ctx)
    assert "outside the workspace" in result.error


def test_files_read_rejects_absolute_path_outside_workspace(registry, ctx):
    result = registry.call("files.read", {"path": "/etc/passwd"}, ctx)
    assert "outside the workspace" in result.error
    assert "root:" not in result.stdout


def test_files_read_accepts_absolute_path_inside_workspace(registry, ctx, workspace):
    (workspace / "notes.txt").write_text("inside\n")
    result = registry.call("files.read", {"path": str(workspace / "notes.txt")}, ctx)
    assert result.ok and result.stdout == "inside\n"


def test_files_read_rejects_symlink_to_etc(registry, ctx, workspace):
    (workspace / "etc").symlink_to("/etc")
    (workspace / "passwd").symlink_to("/etc/passwd")
    for path in ("etc/passwd", "passwd"):
        result = registry.call("files.read", {"path": path}, ctx)
        assert "outside the workspace" in result.error, path
        assert "root:" not in result.stdout


def test_files_write_through_symlinked_directory_is_refused(registry, ctx, workspace, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (workspace / "out").symlink_to(target)
    result = registry.call("files.write", {"path": "out/planted.sh", "content": "x"}, ctx)
    assert "outside the workspace" in result.error
    assert not (target / "planted.sh").exists()


def test_symlink_that_stays_inside_the_workspace_is_followed(registry, ctx, workspace):
    (workspace / "real.txt").write_text("real\n")
    (workspace / "alias.txt").symlink_to("real.txt")
    assert registry.call("files.read", {"path": "alias.txt"}, ctx).stdout == "real\n"


def test_symlink_swapped_in_after_the_check_is_not_followed(sandbox, workspace, monkeypatch):
    (workspace / "swapped").symlink_to("/etc/passwd")
    # What a racing process achieves: the path checked is not the path finally opened.
    monkeypatch.setattr(Sandbox, "resolve", lambda self, path: self.root / "swapped")
    with pytest.raises(PathEscape):
        sandbox.open_file("swapped", os.O_RDONLY)


def test_files_list_shows_links_without_following_them_out(registry, ctx, workspace):
    (workspace / "etc").symlink_to("/etc")
    result = registry.call("files.list", {"path": ".", "recursive": True}, ctx)
    assert result.ok
    assert [e["path"] for e in result.value["entries"]] == ["etc"]
    assert result.value["entries"][0]["type"] == "link"
    assert registry.call("files.list", {"path": "etc"}, ctx).error


def test_files_search_finds_workspace_lines_and_never_reads_through_links(registry, ctx, workspace):
    (workspace / "etc").symlink_to("/etc")
    (workspace / "src").mkdir()
    (workspace / "src" / "app.py").write_text("import os\nroot = 1\n")
    result = registry.call("files.search", {"pattern": "^root"}, ctx)
    assert result.value["matches"] == [{"path": "src/app.py", "line": 2, "text": "root = 1"}]
    assert "/bin/" not in result.stdout


def test_files_write_then_read_round_trips_inside_the_workspace(registry, ctx, workspace):
    assert registry.call("files.write", {"path": "a/b/c.txt", "content": "hello"}, ctx).ok
    assert (workspace / "a" / "b" / "c.txt").read_text() == "hello"
    assert registry.call(
        "files.write", {"path": "a/b/c.txt", "content": "!", "append": True}, ctx
    ).ok
    assert registry.call("files.read", {"path": "a/b/c.txt"}, ctx).stdout == "hello!"


def test_run_workspace_is_kept_for_a_resumed_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HETAGENT_WORKSPACES", str(tmp_path / "runs"))
    with Sandbox.for_run("run-42") as first:
        (first.root / "progress.txt").write_text("step 1")
    with Sandbox.for_run("run-42") as again:
        assert (again.root / "progress.txt").read_text() == "step 1"
    with pytest.raises(sb.SandboxError, match="run id"):
        Sandbox.for_run("../escape")


def test_files_read_returns_the_lines_asked_for_and_says_the_file_continues(
    registry, ctx, workspace
):
    (workspace / "long.txt").write_text("".join(f"line {i}\n" for i in range(1, 101)))
    result = registry.call(
        "files.read", {"path": "long.txt", "start_line": 10, "max_lines": 2}, ctx
    )
    assert result.stdout.startswith("line 10\nline 11\n")
    assert "[... file continues after line 11 ...]" in result.stdout


def test_files_read_refuses_binary_files_and_directories(registry, ctx, workspace):
    (workspace / "blob.bin").write_bytes(b"\x7fELF\x00\x00")
    (workspace / "dir").mkdir()
    assert "binary" in registry.call("files.read", {"path": "blob.bin"}, ctx).error
    assert registry.call("files.read", {"path": "dir"}, ctx).error


def test_missing_file_is_an_error_the_agent_can_read(registry, ctx):
    result = registry.call("files.read", {"path": "nope.txt"}, ctx)
    assert result.error == "No such file or directory: nope.txt"


def test_python_tool_imports_modules_of_the_workspace(registry, ctx, workspace):
    (workspace / "helpers.py").write_text("def answer():\n    return 42\n")
    result = registry.call("python", {"code": "import helpers; print(helpers.answer())"}, ctx)
    assert result.stdout == "42\n"


def test_shell_runs_in_the_workspace(registry, ctx, workspace):
    result = registry.call("shell", {"command": "pwd; echo made > made.txt"}, ctx)
    assert result.stdout.splitlines()[0] == str(workspace.resolve())
    assert (workspace / "made.txt").read_text() == "made\n"


read_only_host = pytest.mark.skipif(
    not sb.filesystem_isolation()[0], reason=sb.filesystem_isolation()[1]
)


@read_only_host
def test_shell_cannot_write_outside_the_workspace(registry, ctx, tmp_path):
    result = registry.call("shell", {"command": f"echo planted > {tmp_path}/planted.txt"}, ctx)
    assert result.exit_code == 1 and "Read-only file system" in result.stderr
    assert not (tmp_path / "planted.txt").exists()


@read_only_host
def test_tool_cannot_leave_its_cgroup_or_change_kernel_settings(registry, ctx):
    command = (
        "for f in /sys/fs/cgroup/*/cgroup.procs /proc/sys/vm/drop_caches; do"
        " if [ -e $f ]; then (echo $$ > $f) 2>/dev/null && echo wrote $f; fi; done; echo checked"
    )
    assert registry.call("shell", {"command": command}, ctx).stdout == "checked\n"


@read_only_host
def test_workspace_home_and_tmpdir_stay_writable(registry, ctx, workspace):
    command = "mkdir -p d && echo x > d/f && mktemp >/dev/null && touch ~/.rc && echo ok"
    assert registry.call("shell", {"command": command}, ctx).stdout == "ok\n"
    assert (workspace / "d" / "f").read_text() == "x\n"


def test_extra_writable_directory_and_opting_out(registry, workspace, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    command = {"command": f"echo hi > {shared}/out.txt"}
    with Sandbox(workspace, writable=[shared]) as box:
        assert registry.call("shell", command, ToolContext(box)).ok
    (shared / "out.txt").unlink()
    with Sandbox(workspace, read_only_host=False) as box:
        result = registry.call(
            "shell", {"command": f"echo hi > {tmp_path}/free.txt"}, ToolContext(box)
        )
    assert result.ok and (tmp_path / "free.txt").exists()


def test_writable_host_is_reported_where_it_cannot_be_made_read_only(registry, ctx):
    result = registry.call("shell", {"command": "true"}, ctx)
    isolated, reason = sb.filesystem_isolation()
    assert (reason in result.events) != isolated


# -- environment -----------------------------------------------------------------------------


def test_secret_in_the_agents_environment_does_not_reach_a_tool(registry, ctx, monkeypatch):
    monkeypatch.setenv("HETAGENT_TEST_SECRET", "s3cr3t-value")
    shell = registry.call("shell", {"command": "env"}, ctx)
    python = registry.call("python", {"code": "import os; print(dict(os.environ))"}, ctx)
    assert shell.ok and python.ok
    for result in (shell, python):
        assert "s3cr3t-value" not in result.stdout
        assert "HETAGENT_TEST_SECRET" not in result.stdout


def test_explicitly_allowed_variable_reaches_a_tool(workspace, registry, monkeypatch):
    monkeypatch.setenv("HETAGENT_TEST_ALLOWED", "visible")
    with Sandbox(workspace, env_allow=["HETAGENT_TEST_ALLOWED"]) as box:
        result = registry.call(
            "shell", {"command": "echo $HETAGENT_TEST_ALLOWED"}, ToolContext(box)
        )
    assert result.stdout == "visible\n"


@pytest.mark.parametrize("cpus", [1, 2])
def test_nproc_and_thread_variables_tell_the_cpu_grant(registry, sandbox, cpus):
    granted = min(cpus, len(os.sched_getaffinity(0)))
    ctx = ToolContext(sandbox, CallLimits(cpus=cpus))
    shell = registry.call(
        "shell", {"command": "nproc; echo $OMP_NUM_THREADS $MKL_NUM_THREADS"}, ctx
    )
    assert shell.stdout.split() == [str(granted), str(cpus), str(cpus)]
    code = "import os; print(len(os.sched_getaffinity(0)), os.environ['OPENBLAS_NUM_THREADS'])"
    python = registry.call("python", {"code": code}, ctx)
    assert python.stdout.split() == [str(granted), str(cpus)]


def test_fractional_cpu_grant_gives_one_thread(registry, sandbox):
    ctx = ToolContext(sandbox, CallLimits(cpus=0.5))
    assert (
        registry.call("shell", {"command": "nproc; echo $OMP_NUM_THREADS"}, ctx).stdout == "1\n1\n"
    )


# -- network ---------------------------------------------------------------------------------


def test_network_is_unreachable_from_a_tool_or_the_result_says_so(registry, ctx):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = (
            "import socket\n"
            f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=5)\n"
            "    print('connected')\n"
            "except OSError as exc:\n    print('blocked', exc.errno)\n"
        )
        result = registry.call("python", {"code": code}, ctx)
    isolated, reason = sb.network_isolation()
    if isolated:
        assert result.stdout.startswith("blocked"), result.stdout
    else:
        assert result.stdout.startswith("connected")
        assert reason in result.events


def test_tool_with_network_allowed_reaches_the_host(registry, workspace):
    with socket.create_server(("127.0.0.1", 0)) as server, Sandbox(workspace, network=True) as box:
        port = server.getsockname()[1]
        code = f"import socket; socket.create_connection(('127.0.0.1', {port})); print('ok')"
        assert registry.call("python", {"code": code}, ToolContext(box)).stdout == "ok\n"


# -- time, output, crashes -------------------------------------------------------------------


def test_sleeping_tool_is_killed_at_its_limit_with_its_children(registry, sandbox, workspace):
    ctx = ToolContext(sandbox, CallLimits(timeout_seconds=1))
    result = registry.call(
        "shell", {"command": "sleep 1000 & echo $! > child.pid; echo started; sleep 1000"}, ctx
    )
    assert result.timed_out and not result.ok
    assert result.signal == "SIGKILL" and result.exit_code is None
    assert "timed out after 1 s" in result.error
    assert any(event.startswith("timeout") for event in result.events)
    assert result.stdout == "started\n"  # what it printed before the limit is kept
    assert _gone(int((workspace / "child.pid").read_text()))


def test_timeout_reaches_a_child_that_left_the_process_group(registry, sandbox, workspace):
    ctx = ToolContext(sandbox, CallLimits(timeout_seconds=1))
    command = "setsid sleep 1000 & echo $! > child.pid; sleep 1000"
    result = registry.call("shell", {"command": command}, ctx)
    assert result.timed_out
    assert _gone(int((workspace / "child.pid").read_text()))


def test_tool_timeout_argument_shortens_but_never_extends_the_limit(registry, sandbox):
    ctx = ToolContext(sandbox, CallLimits(timeout_seconds=1))
    result = registry.call("shell", {"command": "sleep 1000", "timeout_seconds": 500}, ctx)
    assert result.timed_out and "after 1 s" in result.error


def test_background_process_left_by_a_finished_call_is_killed(registry, ctx):
    result = registry.call("shell", {"command": "sleep 1000 >/dev/null 2>&1 & echo $!"}, ctx)
    assert result.ok
    assert _gone(int(result.stdout))
    assert any("background" in event for event in result.events)


@pytest.mark.skipif(
    sb.controller().name == "fallback", reason="only a cgroup finds a process reparented to init"
)
def test_process_that_double_forked_away_is_killed_when_the_call_ends(registry, ctx, workspace):
    result = registry.call("shell", {"command": "(setsid sleep 1000 & echo $! > away.pid)"}, ctx)
    assert result.ok
    assert _gone(int((workspace / "away.pid").read_text()))
    assert any("background" in event for event in result.events)


def test_concurrent_calls_each_get_their_own_result(registry, ctx):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda i: registry.call("shell", {"command": f"echo {i}"}, ctx), range(8))
        )
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(8)]


def test_huge_output_is_truncated_with_a_marker(registry, sandbox):
    ctx = ToolContext(sandbox, CallLimits(output_bytes=4096))
    result = registry.call(
        "shell", {"command": "head -c 5000000 /dev/zero | tr '\\0' a; echo END"}, ctx
    )
    assert result.ok and result.truncated
    assert "bytes truncated ...]" in result.stdout
    assert len(result.stdout) < 4096 + 100
    assert result.stdout.startswith("aaaa") and result.stdout.endswith("END\n")


def test_segfaulting_tool_reports_the_signal_and_the_caller_survives(registry, ctx):
    result = registry.call("python", {"code": "import ctypes; ctypes.string_at(0)"}, ctx)
    assert result.signal == "SIGSEGV" and result.exit_code is None
    assert "SIGSEGV" in result.error and "SIGSEGV" in result.text
    assert registry.call("shell", {"command": "echo still here"}, ctx).stdout == "still here\n"


def test_failing_command_reports_its_exit_code_and_stderr(registry, ctx):
    result = registry.call("shell", {"command": "echo oops >&2; exit 3"}, ctx)
    assert result.exit_code == 3 and result.stderr == "oops\n" and not result.ok
    assert "[exit code 3]" in result.text


def test_program_that_cannot_start_is_an_error_result(sandbox):
    result = sandbox.run(["/nonexistent/tool"], tool="x")
    assert result.error and "could not start" in result.error


# -- exhaustion ------------------------------------------------------------------------------


@needs_pids_limit
def test_fork_bomb_is_contained_by_the_pids_limit(registry, sandbox):
    ctx = ToolContext(sandbox, CallLimits(timeout_seconds=20, pids=32))
    code = (
        "import os, time\n"
        "n = 0\n"
        "for _ in range(400):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(1000); os._exit(0)\n"
        "        n += 1\n"
        "    except OSError:\n"
        "        break\n"
        "print(n)\n"
    )
    result = registry.call("python", {"code": code}, ctx)
    assert result.ok
    assert int(result.stdout) < 32
    if "pids" in sb.controller().features:
        assert any("pids limit" in event for event in result.events)


@needs_pids_limit
def test_shell_fork_bomb_is_held_at_the_pids_limit_and_killed_at_the_timeout(registry, sandbox):
    ctx = ToolContext(sandbox, CallLimits(timeout_seconds=2, pids=64))
    result = registry.call("shell", {"command": ":(){ :|:; };:"}, ctx)  # each level waits
    assert result.timed_out and "timed out" in result.error
    if "pids" in sb.controller().features:
        assert any("pids limit" in event for event in result.events)
    assert registry.call("shell", {"command": "echo alive"}, ctx).stdout == "alive\n"


def test_peak_memory_of_a_call_is_reported(registry, ctx):
    code = "b = bytearray(96 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); print('ok')"
    result = registry.call("python", {"code": code}, ctx)
    assert result.ok
    assert result.peak_memory_bytes >= 96 * 1024 * 1024


@pytest.mark.skipif(
    sb.controller().name == "fallback",
    reason="fallback: its RLIMIT_DATA backstop fails a large allocation before the broker acts",
)
def test_call_the_broker_ends_returns_the_oom_message_and_the_next_call_runs(registry, sandbox):
    from hetagent.policies.resources import resource_policy
    from hetagent.spec import ResourceHints

    policy = resource_policy("broker", sb.controller(), budget_bytes=96 << 20)
    ctx = ToolContext(sandbox, policy=policy, hints=ResourceHints(memory="32Mi"))
    try:
        hog = registry.call("python", {"code": "b = bytearray(400 << 20); print('done')"}, ctx)
        fits = registry.call("python", {"code": "b = bytearray(40 << 20); print('done')"}, ctx)
    finally:
        policy.close()
    assert hog.text.startswith("[OOM] peak ") and hog.text.endswith("budget 96 MB")
    assert "done" not in hog.stdout
    assert fits.ok and fits.stdout == "done\n"


def test_limits_of_a_spec_tool_node_come_from_its_hints():
    from hetagent.spec import ResourceHints

    limits = CallLimits.from_node(ResourceHints(memory="128Mi", cpu="500m"), timeout_seconds=30)
    assert (limits.memory_bytes, limits.cpus, limits.timeout_seconds) == (128 << 20, 0.5, 30)
    assert CallLimits.from_node() == CallLimits()


def test_invalid_limits_are_refused_with_one_line():
    with pytest.raises(sb.SandboxError, match="timeout_seconds must be > 0"):
        CallLimits(timeout_seconds=0)
