"""How the CLI reports failures to the engine that calls it, as podman and
conmon read them: the `--log-format=json` file and `delete --force`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kata_py.cli", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=60)


def test_a_failure_is_one_json_line_in_the_log_file_podman_can_parse(tmp_path: Path) -> None:
    log = tmp_path / "oci-log"
    out = _cli(tmp_path, "--log-format=json", "--log", str(log),
               "update", "--memory", 'x"y', "c1")
    assert out.returncode == 1
    assert out.stderr == """kata-py: invalid size 'x"y': use bytes or a k/m/g suffix\n"""
    lines = log.read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])    # podman json.Unmarshal()s the whole file
    assert record["level"] == "error"
    assert record["msg"] == """invalid size 'x"y': use bytes or a k/m/g suffix"""
    assert record["time"].endswith("Z")


def test_a_failure_goes_to_stderr_only_without_a_log_file(tmp_path: Path) -> None:
    out = _cli(tmp_path, "state", "nothere")
    assert out.returncode == 1
    assert out.stderr == ("kata-py: container nothere does not exist: "
                          "check the id with `kata-py list`\n")


def test_delete_force_of_a_missing_container_succeeds(tmp_path: Path) -> None:
    out = _cli(tmp_path, "delete", "--force", "nothere")
    assert (out.returncode, out.stderr) == (0, "")


def test_delete_force_removes_a_container_directory_without_state(tmp_path: Path) -> None:
    leftover = tmp_path / "containers" / "half"
    leftover.mkdir(parents=True)
    (leftover / ".lock").touch()
    out = _cli(tmp_path, "delete", "--force", "half")
    assert (out.returncode, out.stderr) == (0, "")
    assert not leftover.exists()


def test_delete_of_a_missing_container_without_force_fails(tmp_path: Path) -> None:
    out = _cli(tmp_path, "delete", "nothere")
    assert out.returncode == 1
    assert "container nothere does not exist" in out.stderr


def test_the_host_cgroup_manager_flags_engines_pass_are_accepted(tmp_path: Path) -> None:
    # conmon adds --systemd-cgroup under podman's systemd cgroup manager;
    # podman adds --cgroup-manager=disabled for --cgroups=disabled.
    for flags in (["--systemd-cgroup"], ["--cgroup-manager", "disabled"],
                  ["--cgroup-manager=systemd"]):
        out = _cli(tmp_path, *flags, "delete", "--force", "nothere")
        assert (out.returncode, out.stderr) == (0, ""), flags


def test_a_usage_error_is_logged_too(tmp_path: Path) -> None:
    log = tmp_path / "oci-log"
    out = _cli(tmp_path, "--log-format=json", "--log", str(log), "create", "--bogus", "c1")
    assert out.returncode == 2
    assert json.loads(log.read_text())["msg"] == "No such option '--bogus'."


def test_create_with_a_bad_runtime_config_fails_before_it_writes_any_state(
        tmp_path: Path) -> None:
    """The config is read before the container's state exists; it used to fail in
    the monitor and again in create's clean-up, which then left the state behind."""
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2", "root": {"path": "rootfs"},
        "process": {"args": ["/bin/true"], "cwd": "/"}}))
    config = tmp_path / "kata-py.toml"
    config.write_text("[factory]\ntemplat = true\n")
    out = _cli(tmp_path / "root", "--config", str(config), "create", "-b", str(bundle), "c1")
    assert out.returncode == 1
    assert out.stderr == ("kata-py: unknown runtime config key 'factory.templat': remove it or "
                          "check the spelling against configs/kata-py.toml\n")
    assert not (tmp_path / "root" / "containers" / "c1").exists()


# --- bad input is refused before a VM boots, in one line ---------------------------
#
# Each create below must fail in its pre-checks. The runtime config names a
# guest image that does not exist, so that even a create that got past them
# would fail without booting a VM.

ID_HINT = ('use an id from 0 to 4294967294; 4294967295 is (uid_t)-1, which setresuid(2) takes '
           'as "leave the id unchanged"')


def _bundle(tmp_path: Path, process: dict[str, object] | None = None,
            linux: dict[str, object] | None = None) -> Path:
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True, exist_ok=True)
    doc: dict[str, object] = {"ociVersion": "1.0.2", "root": {"path": "rootfs"},
                              "process": {"args": ["/bin/true"], "cwd": "/", **(process or {})}}
    if linux is not None:
        doc["linux"] = linux
    (bundle / "config.json").write_text(json.dumps(doc))
    return bundle


def _create(tmp_path: Path, bundle: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "kata-py.toml"
    config.write_text(f'[hypervisor]\nimage_dir = "{tmp_path}/no-image"\n')
    return _cli(tmp_path / "root", *flags, "--config", str(config), "create", "-b", str(bundle),
                "c1")


def _nothing_left(tmp_path: Path) -> bool:
    root = tmp_path / "root"
    return not (root / "containers" / "c1").exists() and not (root / "vm" / "c1").exists()


def test_create_refuses_uid_4294967295_in_one_line_and_leaves_no_state(tmp_path: Path) -> None:
    out = _create(tmp_path, _bundle(tmp_path, {"user": {"uid": 4294967295, "gid": 0}}))
    assert out.returncode == 1
    assert out.stderr == ("kata-py: config.json: process.user.uid must be at most 4294967294, "
                          f"not 4294967295: {ID_HINT}\n")
    assert _nothing_left(tmp_path)


def test_create_refuses_an_additional_gid_of_4294967295(tmp_path: Path) -> None:
    out = _create(tmp_path, _bundle(tmp_path, {"user": {"uid": 0, "gid": 0,
                                                        "additionalGids": [4294967295]}}))
    assert (out.returncode, out.stderr) == (1, (
        "kata-py: config.json: process.user.additionalGids[0] must be at most 4294967294, "
        f"not 4294967295: {ID_HINT}\n"))
    assert _nothing_left(tmp_path)


def test_create_refuses_an_environment_execve_would_refuse_and_leaves_no_state(
        tmp_path: Path) -> None:
    env = [f"V{i}={'x' * 110_000}" for i in range(20)]     # 2.1 MB: each fine, not all
    total = sum(len(s) + 1 + 8 for s in ["/bin/true", *env])
    out = _create(tmp_path, _bundle(tmp_path, {"env": env}))
    assert out.returncode == 1
    assert out.stderr == (
        f"kata-py: config.json: process.args and process.env are {total} bytes together, more "
        "than the 2097152 execve(2) takes with RLIMIT_STACK 8388608: shorten them; Linux "
        "gives arguments and environment a quarter of RLIMIT_STACK, at most 6 MiB, and fails "
        "execve with E2BIG beyond it\n")
    assert _nothing_left(tmp_path)


def test_create_refuses_one_environment_string_over_max_arg_strlen(tmp_path: Path) -> None:
    out = _create(tmp_path, _bundle(tmp_path, {"env": ["PATH=/bin", "BIG=" + "x" * 200_000]}))
    assert (out.returncode, out.stderr) == (1, (
        "kata-py: config.json: process.env[1] is 200004 bytes, more than the 131071 execve(2) "
        "takes in one string: shorten it; Linux refuses a longer argument or environment "
        "string (MAX_ARG_STRLEN) with E2BIG\n"))
    assert _nothing_left(tmp_path)


def test_create_refuses_a_memory_limit_too_small_for_the_launcher(tmp_path: Path) -> None:
    out = _create(tmp_path, _bundle(tmp_path, linux={"resources": {"memory": {"limit": 1}}}))
    assert (out.returncode, out.stderr) == (1, (
        "kata-py: config.json: linux.resources.memory.limit must be at least 16777216 (16 MiB), "
        "not 1: kata-py builds each container with a Python launcher inside its memory cgroup; "
        "give it 16m or more, or -1 for no limit\n"))
    assert _nothing_left(tmp_path)


def test_an_unknown_seccomp_syscall_is_a_warning_line_not_a_failure(tmp_path: Path) -> None:
    """The warning comes from create's pre-checks; the terminal without a
    console socket then stops this create before any state exists."""
    seccomp = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["getpid", "opne"], "action": "SCMP_ACT_ERRNO"}]}
    bundle = _bundle(tmp_path, {"terminal": True}, {"seccomp": seccomp})
    out = _create(tmp_path, bundle)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "kata-py: warning: unknown syscall ignored: linux.seccomp.syscalls[0].names[1] 'opne'",
        "kata-py: process.terminal is set but no --console-socket was given: pass "
        "--console-socket or set process.terminal to false in config.json"]
    log = tmp_path / "kata-py.log"
    out = _create(tmp_path, bundle, "--log", str(log))
    assert out.stderr.startswith("kata-py: process.terminal is set")
    assert log.read_text().splitlines()[0] == (
        "kata-py: warning: unknown syscall ignored: linux.seccomp.syscalls[0].names[1] 'opne'")
    assert _nothing_left(tmp_path)


def test_update_refuses_a_memory_limit_too_small_for_the_launcher(tmp_path: Path) -> None:
    hint = ("kata-py builds each container with a Python launcher inside its memory cgroup; "
            "give it 16m or more, or -1 for no limit")
    out = _cli(tmp_path, "update", "--memory", "1m", "c1")
    assert (out.returncode, out.stderr) == (1, (
        f"kata-py: memory limit must be at least 16777216 (16 MiB), not 1048576: {hint}\n"))
    resources = tmp_path / "resources.json"
    resources.write_text(json.dumps({"memory": {"limit": 1}}))
    out = _cli(tmp_path, "update", "--resources", str(resources), "c1")
    assert (out.returncode, out.stderr) == (1, (
        f"kata-py: resources.memory.limit must be at least 16777216 (16 MiB), not 1: {hint}\n"))


def _running(tmp_path: Path, process: dict[str, object] | None = None) -> Path:
    """A container state that reads as running (its pid is this test's own
    process), for exec's checks, which come before it asks the agent."""
    from kata_py.hypervisor.process import read_start_time
    from kata_py.state import ContainerState, StateStore

    bundle = _bundle(tmp_path, process)
    root = tmp_path / "root"
    StateStore(root / "containers").create(ContainerState(
        id="c1", bundle=str(bundle), rootfs=str(bundle / "rootfs"), status="running",
        created="2024-01-01T00:00:00Z", pid=os.getpid(),
        pid_start_time=read_start_time(os.getpid()) or 0, sandbox_id="c1"))
    return root


def test_exec_refuses_user_4294967295(tmp_path: Path) -> None:
    root = _running(tmp_path)
    out = _cli(root, "exec", "--user", "4294967295", "c1", "/bin/true")
    assert (out.returncode, out.stderr) == (1, (
        f"kata-py: exec --user 4294967295: an id must be at most 4294967294: {ID_HINT}\n"))
    out = _cli(root, "exec", "--user", "0:4294967295", "c1", "/bin/true")
    assert out.stderr.startswith("kata-py: exec --user 0:4294967295: an id must be at most ")


def test_exec_refuses_a_process_file_with_gid_4294967295(tmp_path: Path) -> None:
    root = _running(tmp_path)
    process = tmp_path / "process.json"
    process.write_text(json.dumps({"args": ["/bin/true"], "cwd": "/",
                                   "user": {"uid": 0, "gid": 4294967295}}))
    out = _cli(root, "exec", "--process", str(process), "c1")
    assert (out.returncode, out.stderr) == (1, (
        "kata-py: config.json: process.user.gid must be at most 4294967294, not 4294967295: "
        f"{ID_HINT}\n"))


def test_exec_refuses_an_environment_that_its_additions_make_too_big(tmp_path: Path) -> None:
    env = [f"V{i}={'x' * 100_000}" for i in range(20)]      # 2,000,247 bytes: fits
    root = _running(tmp_path, {"env": env})
    added = "EXTRA=" + "y" * 100_000
    out = _cli(root, "exec", "-e", added, "c1", "/bin/true")
    total = sum(len(s) + 1 + 8 for s in ["/bin/true", *env, added])
    assert (out.returncode, out.stderr.splitlines()[0]) == (1, (
        f"kata-py: exec: process.args and process.env are {total} bytes together, more than "
        "the 2097152 execve(2) takes with RLIMIT_STACK 8388608: shorten them; Linux gives "
        "arguments and environment a quarter of RLIMIT_STACK, at most 6 MiB, and fails execve "
        "with E2BIG beyond it"))


def test_update_with_a_memory_limit_of_0_leaves_the_limit_as_runc_does(tmp_path: Path) -> None:
    root = _running(tmp_path)
    out = _cli(root, "update", "--memory", "0", "c1")
    assert (out.returncode, out.stderr) == (
        1, "kata-py: nothing to update: give --resources or a resource flag\n")


def _exec(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`kata-py exec` with no terminal on stdin, whoever runs the tests."""
    return subprocess.run([sys.executable, "-m", "kata_py.cli", "--root", str(root), "exec",
                           *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60)


def test_exec_with_a_terminal_is_checked_before_the_agent_as_runc_checks_it(
        tmp_path: Path) -> None:
    root = _running(tmp_path)
    out = _exec(root, "-t", "-d", "c1", "/bin/true")
    assert (out.returncode, out.stderr) == (1, (
        "kata-py: exec -t --detach needs --console-socket: pass --console-socket (as conmon "
        "does), or exec in the foreground from a terminal\n"))
    out = _exec(root, "-t", "--console-socket", str(tmp_path / "sock"), "c1", "/bin/true")
    assert (out.returncode, out.stderr) == (1, (
        "kata-py: exec --console-socket needs --detach: pass --detach too, or drop "
        "--console-socket to use this terminal\n"))
    out = _exec(root, "-t", "c1", "/bin/true")
    assert (out.returncode, out.stderr) == (1, (
        "kata-py: exec -t in the foreground needs a terminal on stdin: run it from a "
        "terminal, pass --detach and --console-socket, or drop -t\n"))


def test_unknown_capabilities_are_a_warning_that_names_the_json_path(tmp_path: Path) -> None:
    root = _running(tmp_path, {"capabilities": {"bounding": ["CAP_KILL", "CAP_FLY"]}})
    out = _exec(root, "-t", "-d", "c1", "/bin/true")     # fails after parsing, before the agent
    assert out.stderr.splitlines()[0] == (
        'kata-py: warning: config.json: process.capabilities.bounding[1] "CAP_FLY" is not a '
        "known capability; ignored, as runc does")
