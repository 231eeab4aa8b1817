"""How the CLI reports failures to the engine that calls it, as podman and
conmon read them: the `--log-format=json` file and `delete --force`."""

from __future__ import annotations

import json
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
    the shim and again in create's clean-up, which then left the state behind."""
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
