"""config.json parsing: typed frozen objects out, exact error messages for bad input."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kata_py.errors import ConfigError
from kata_py.spec import Capabilities, Spec, default_spec, load_spec, parse_spec
from kata_py.translate import to_launch_config

FIXTURES = Path(__file__).parent / "fixtures" / "spec"
DELETE = object()


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    (tmp_path / "rootfs").mkdir()
    return tmp_path


def minimal() -> dict[str, Any]:
    return {"ociVersion": "1.2.0",
            "process": {"args": ["sh"], "cwd": "/"},
            "root": {"path": "rootfs"}}


def patched(path: str, value: object) -> dict[str, Any]:
    """minimal() with the dotted `path` set to `value` (DELETE removes it)."""
    doc = minimal()
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


def error_of(data: object, bundle: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_spec(data, bundle)
    return caught.value


def podman_config(bundle: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "podman.json").read_text())
    data["root"]["path"] = str(bundle / "rootfs")
    return data


# --- what parses, and into what ---------------------------------------------

def test_minimal_config_parses_with_defaults(bundle: Path) -> None:
    spec = parse_spec(minimal(), bundle)
    assert spec.oci_version == "1.2.0"
    assert spec.process.args == ("sh",)
    assert spec.process.user.uid == 0 and spec.process.terminal is False
    assert spec.root.path == (bundle / "rootfs").resolve() and spec.root.readonly is False
    assert spec.mounts == () and spec.linux.namespaces == () and dict(spec.annotations) == {}


def test_relative_root_path_is_resolved_against_the_bundle(bundle: Path) -> None:
    spec = parse_spec(patched("root.path", "./rootfs/../rootfs"), bundle)
    assert spec.root.path.is_absolute()
    assert spec.root.path == (bundle / "rootfs").resolve()


def test_absolute_root_path_is_kept(bundle: Path) -> None:
    spec = parse_spec(patched("root.path", str(bundle / "rootfs")), bundle)
    assert spec.root.path == (bundle / "rootfs").resolve()


def test_parsed_spec_is_frozen_and_holds_no_lists_or_dicts(bundle: Path) -> None:
    spec = parse_spec(podman_config(bundle), bundle)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.hostname = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.annotations["x"] = "y"  # type: ignore[index]
    with pytest.raises(TypeError):
        spec.linux.sysctl["x"] = "y"  # type: ignore[index]

    def walk(value: object) -> None:
        assert not isinstance(value, list | dict), value
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name))
        elif isinstance(value, tuple):
            for item in value:
                walk(item)
    walk(spec)


def test_default_spec_parses(bundle: Path) -> None:
    spec = parse_spec(default_spec(), bundle)
    assert spec.process.args == ("sh",) and spec.process.terminal is True
    assert spec.process.capabilities is not None
    assert spec.process.capabilities.bounding == (
        "CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE")
    assert [m.destination for m in spec.mounts] == [
        "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]
    cgroup = ["cgroup"] if Path("/sys/fs/cgroup/cgroup.controllers").exists() else []
    assert [ns.type for ns in spec.linux.namespaces] == [
        "pid", "network", "ipc", "uts", "mount", *cgroup]   # runc's rule (spec_default.py)
    assert "/proc/kcore" in spec.linux.masked_paths
    assert spec.linux.resources is not None
    assert spec.linux.resources.devices[0].allow is False
    assert spec.root.readonly is True


def test_rootless_default_spec_parses_with_a_user_namespace_and_no_network(
        bundle: Path) -> None:
    data = default_spec(rootless=True)
    json.dumps(data)
    spec = parse_spec(data, bundle)
    cgroup = ["cgroup"] if Path("/sys/fs/cgroup/cgroup.controllers").exists() else []
    assert [ns.type for ns in spec.linux.namespaces] == [
        "pid", "ipc", "uts", "mount", *cgroup, "user"]
    assert spec.linux.uid_mappings[0].container_id == 0
    assert spec.linux.resources is None
    sys_mount = next(m for m in spec.mounts if m.destination == "/sys")
    assert sys_mount.options == ("rbind", "nosuid", "noexec", "nodev", "ro")
    devpts = next(m for m in spec.mounts if m.destination == "/dev/pts")
    assert "gid=5" not in devpts.options


def test_default_spec_returns_a_fresh_copy_each_time() -> None:
    first = default_spec()
    first["process"]["args"].append("-x")
    assert default_spec()["process"]["args"] == ["sh"]


def test_podman_generated_config_parses(bundle: Path) -> None:
    spec = parse_spec(podman_config(bundle), bundle)
    assert spec.oci_version == "1.0.2-dev"
    assert spec.process.args == ("/bin/sh", "-c", "echo hello")
    assert spec.process.user.umask == 18
    assert spec.process.user.additional_gids[-1] == 27
    assert spec.process.rlimits[1].type == "RLIMIT_NPROC"
    assert spec.process.oom_score_adj == 0
    assert spec.process.apparmor_profile == "containers-default-0.57.4"
    data_mount = spec.mounts[-1]
    assert (data_mount.destination, data_mount.type, data_mount.source) == (
        "/data", "bind", "/srv/data")
    assert data_mount.options == ("rbind", "rw", "rprivate")
    assert spec.annotations["io.container.manager"] == "libpod"
    assert spec.linux.namespaces[1].path.startswith("/run/netns/")
    assert spec.linux.cgroups_path == "machine.slice:libpod:3f1c2a9e8b7d5e6f"
    assert spec.linux.sysctl == {"net.ipv4.ping_group_range": "0 0"}
    resources = spec.linux.resources
    assert resources is not None and resources.memory is not None and resources.cpu
    assert resources.memory.limit == 512 * 1024 * 1024
    assert (resources.cpu.quota, resources.cpu.period) == (150000, 100000)
    assert resources.pids is not None and resources.pids.limit == 2048
    assert resources.devices[3].minor is None
    seccomp = spec.linux.seccomp
    assert seccomp is not None
    assert (seccomp.default_action, seccomp.default_errno_ret) == ("SCMP_ACT_ERRNO", 38)
    assert seccomp.syscalls[0].errno_ret == 1
    clone = seccomp.syscalls[-1]
    assert clone.names == ("clone",)
    assert clone.args[0].op == "SCMP_CMP_MASKED_EQ" and clone.args[0].value == 2114060288
    assert spec.hooks.poststop == ()


def test_unknown_capability_names_are_dropped_with_a_warning_naming_their_path(
        bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    """runc and crun ignore them with a warning; the guest never sees them."""
    caps = {"bounding": ["CAP_KILL", "CAP_FLY"], "effective": ["CAP_KILL"],
            "permitted": ["CAP_KILL", "CAP_FLY"], "inheritable": ["NET_ADMIN"]}
    with caplog.at_level(logging.WARNING, logger="kata_py.spec"):
        spec = parse_spec(patched("process.capabilities", caps), bundle)
    assert spec.process.capabilities == Capabilities(
        bounding=("CAP_KILL",), effective=("CAP_KILL",), permitted=("CAP_KILL",))
    assert caplog.messages == [
        f"config.json: process.capabilities.{path} is not a known capability; ignored, "
        "as runc does" for path in ('bounding[1] "CAP_FLY"', 'inheritable[0] "NET_ADMIN"',
                                    'permitted[1] "CAP_FLY"')]


def test_ambient_capabilities_not_also_inheritable_and_permitted_are_dropped_and_logged(
        bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    """PR_CAP_AMBIENT_RAISE needs the capability in both sets: runc 1.1
    raises the others and says nothing (an info line here); unknown names
    get a warning."""
    caps = {"bounding": ["CAP_KILL", "CAP_CHOWN", "CAP_SYSLOG"],
            "permitted": ["CAP_KILL", "CAP_CHOWN"], "inheritable": ["CAP_CHOWN", "CAP_SYSLOG"],
            "ambient": ["CAP_KILL", "CAP_CHOWN", "CAP_SYSLOG", "CAP_BPF", "CAP_NOPE"]}
    with caplog.at_level(logging.INFO, logger="kata_py.spec"):
        spec = parse_spec(patched("process.capabilities", caps), bundle)
    assert spec.process.capabilities is not None
    assert spec.process.capabilities.ambient == ("CAP_CHOWN",)
    at = "config.json: process.capabilities"
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO", "INFO", "INFO"]
    assert caplog.messages == [
        f'{at}.ambient[4] "CAP_NOPE" is not a known capability; ignored, as runc does',
        f'{at}.ambient[0] "CAP_KILL" is not in {at[13:]}.inheritable, so the kernel cannot '
        "raise it; ignored, as runc does",
        f'{at}.ambient[2] "CAP_SYSLOG" is not in {at[13:]}.permitted, so the kernel cannot '
        "raise it; ignored, as runc does",
        f'{at}.ambient[3] "CAP_BPF" is not in {at[13:]}.inheritable and {at[13:]}.permitted, '
        "so the kernel cannot raise it; ignored, as runc does"]


def test_runc_spec_s_own_config_parses_without_a_warning(
        bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`runc spec` lists ambient capabilities and no inheritable set."""
    runc = shutil.which("runc")
    assert runc is not None, "scripts/setup.sh installs runc"
    made = tmp_path / "runc-spec"
    made.mkdir()
    subprocess.run([runc, "spec"], cwd=made, check=True)
    data = json.loads((made / "config.json").read_text())
    data["root"]["path"] = str(bundle / "rootfs")
    with caplog.at_level(logging.WARNING, logger="kata_py.spec"):
        spec = parse_spec(data, bundle)
    caps = spec.process.capabilities
    assert caps is not None and caps.ambient == () and caps.inheritable == ()
    assert caps.effective == ("CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE")
    assert caplog.messages == []


def test_hooks_parse_in_their_order(bundle: Path) -> None:
    hook = {"path": "/usr/bin/hook", "args": ["hook", "x"], "env": ["A=1"], "timeout": 5}
    spec = parse_spec(patched("hooks", {"createRuntime": [hook], "poststop": [hook]}), bundle)
    assert spec.hooks.create_runtime[0].args == ("hook", "x")
    assert spec.hooks.poststop[0].timeout == 5
    assert spec.hooks.prestart == ()


def test_unknown_properties_are_ignored_and_logged_at_debug(
        bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    doc = minimal()
    doc["futureTopLevel"] = {"anything": [1, 2]}
    doc["process"]["futureFlag"] = True
    doc["process"]["commandLine"] = "windows only"
    doc["linux"] = {"resources": {"memory": {"limit": 1 << 30, "newKnob": 1}},
                    "seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                                              "comment": "podman keeps these"}]}}
    with caplog.at_level(logging.DEBUG, logger="kata_py.spec_reader"):
        spec = parse_spec(doc, bundle)
    assert spec.linux.resources is not None and spec.linux.resources.memory is not None
    assert spec.linux.resources.memory.limit == 1 << 30
    for path in ("futureTopLevel", "process.futureFlag", "process.commandLine",
                 "linux.resources.memory.newKnob", "linux.seccomp.syscalls[0].comment"):
        assert f"config.json: ignoring unknown property {path}" in caplog.messages


def test_null_optional_values_count_as_absent(bundle: Path) -> None:
    spec = parse_spec(patched("hostname", None), bundle)
    assert spec.hostname == ""


def test_seccomp_listener_path_without_notify_is_kept(bundle: Path) -> None:
    seccomp = {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/seccomp.sock"}
    spec = parse_spec(patched("linux", {"seccomp": seccomp}), bundle)
    assert spec.linux.seccomp is not None
    assert spec.linux.seccomp.listener_path == "/run/seccomp.sock"


def test_linux_personality_domain_linux_is_accepted(bundle: Path) -> None:
    assert isinstance(parse_spec(patched("linux", {"personality": {"domain": "LINUX"}}),
                                 bundle), Spec)


# --- what is rejected, and how it is said ------------------------------------

NOTIFY = {"defaultAction": "SCMP_ACT_ALLOW",
          "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]}
BAD_OP = {"defaultAction": "SCMP_ACT_ALLOW",
          "syscalls": [{"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                        "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_XX"}]}]}

BAD_INPUTS = [
    ("ociVersion", DELETE, "config.json: ociVersion is missing"),
    ("ociVersion", "2.0.0", "config.json: ociVersion 2.0.0 is not supported by kata-py"),
    ("ociVersion", "1.3.0", "config.json: ociVersion 1.3.0 is not supported by kata-py"),
    ("ociVersion", 1, "config.json: ociVersion must be a string, not 1"),
    ("process", DELETE, "config.json: process is missing"),
    ("root", DELETE, "config.json: root is missing"),
    ("process.args", DELETE, "config.json: process.args must not be empty"),
    ("process.args", [], "config.json: process.args must not be empty"),
    ("process.args", "sh", 'config.json: process.args must be an array, not "sh"'),
    ("process.args", ["sh", 1], "config.json: process.args[1] must be a string, not 1"),
    ("process.cwd", "tmp", 'config.json: process.cwd must be an absolute path, not "tmp"'),
    ("process.cwd", DELETE, "config.json: process.cwd is missing"),
    ("process.terminal", "yes", 'config.json: process.terminal must be a boolean, not "yes"'),
    ("process.terminal", 1, "config.json: process.terminal must be a boolean, not 1"),
    ("process.user", {"uid": True},
     "config.json: process.user.uid must be an integer, not true"),
    ("process.user", {"uid": -1}, "config.json: process.user.uid must be at least 0, not -1"),
    ("process.user", {"uid": 1.5}, "config.json: process.user.uid must be an integer, not 1.5"),
    ("process.user", {"uid": 4294967295},
     "config.json: process.user.uid must be at most 4294967294, not 4294967295"),
    ("process.user", {"uid": 0, "gid": 4294967295},
     "config.json: process.user.gid must be at most 4294967294, not 4294967295"),
    ("process.user", {"additionalGids": [10, 4294967295]},
     "config.json: process.user.additionalGids[1] must be at most 4294967294, not 4294967295"),
    ("process.user", {"uid": 2**32},
     "config.json: process.user.uid must be at most 4294967294, not 4294967296"),
    ("process.env", ["A=1", "B=" + "x" * 131070],
     "config.json: process.env[1] is 131072 bytes, more than the 131071 execve(2) takes in "
     "one string"),
    ("process.args", ["sh", "\u00e9" * 65536],
     "config.json: process.args[1] is 131072 bytes, more than the 131071 execve(2) takes in "
     "one string"),
    ("hooks", {"poststop": [{"path": "/bin/true", "args": ["true", "x" * 131072]}]},
     "config.json: hooks.poststop[0].args[1] is 131072 bytes, more than the 131071 execve(2) "
     "takes in one string"),
    ("process.oomScoreAdj", 1001,
     "config.json: process.oomScoreAdj must be at most 1000, not 1001"),
    ("process.rlimits", [{"type": "RLIMIT_FOO", "hard": 1, "soft": 1}],
     'config.json: process.rlimits[0].type "RLIMIT_FOO" is not a known rlimit'),
    ("process.rlimits", [{"type": "RLIMIT_NOFILE", "hard": 1, "soft": 1},
                         {"type": "RLIMIT_NOFILE", "hard": 2, "soft": 2}],
     "config.json: process.rlimits[1].type RLIMIT_NOFILE is listed twice"),
    ("process.rlimits", [{"type": "RLIMIT_NOFILE", "hard": 1, "soft": 2}],
     "config.json: process.rlimits[0] soft limit 2 is above the hard limit 1"),
    ("process.rlimits", [{"type": "RLIMIT_NOFILE", "soft": 2}],
     "config.json: process.rlimits[0].hard is missing"),
    ("process.scheduler", {"policy": "SCHED_OTHER"},
     "config.json: process.scheduler is not supported by kata-py"),
    ("process.ioPriority", {"class": "IOPRIO_CLASS_RT", "priority": 1},
     "config.json: process.ioPriority is not supported by kata-py"),
    ("root.path", 7, "config.json: root.path must be a string, not 7"),
    ("mounts", {}, "config.json: mounts must be an array, not {}"),
    ("mounts", ["proc"], 'config.json: mounts[0] must be an object, not "proc"'),
    ("mounts", [{"destination": "proc", "type": "proc"}],
     'config.json: mounts[0].destination must be an absolute path, not "proc"'),
    ("mounts", [{"type": "proc"}], "config.json: mounts[0].destination is missing"),
    ("mounts", [{"destination": "/m", "options": ["ro", None]}],
     "config.json: mounts[0].options[1] must be a string, not null"),
    ("mounts", [{"destination": "/m", "uidMappings": [{"containerID": 0, "hostID": 1,
                                                        "size": 1}]}],
     "config.json: mounts[0].uidMappings is not supported by kata-py"),
    ("hooks", {"poststop": [{"path": "cleanup.sh"}]},
     'config.json: hooks.poststop[0].path must be an absolute path, not "cleanup.sh"'),
    ("hooks", {"prestart": [{"path": "/bin/true", "timeout": 0}]},
     "config.json: hooks.prestart[0].timeout must be greater than zero, not 0"),
    ("annotations", {"a": 1}, 'config.json: annotations["a"] must be a string, not 1'),
    ("annotations", ["a"], 'config.json: annotations must be an object, not ["a"]'),
    ("linux.resources", {"memory": {"limit": "abc"}},
     'config.json: linux.resources.memory.limit must be an integer, not "abc"'),
    ("linux.resources", {"memory": {"limit": 1}},
     "config.json: linux.resources.memory.limit must be at least 16777216 (16 MiB), not 1"),
    ("linux.resources", {"memory": {"limit": (16 << 20) - 1}},
     "config.json: linux.resources.memory.limit must be at least 16777216 (16 MiB), "
     "not 16777215"),
    ("linux.resources", {"memory": {"swappiness": 101}},
     "config.json: linux.resources.memory.swappiness must be at most 100, not 101"),
    ("linux.resources", {"cpu": {"quota": "50%"}},
     'config.json: linux.resources.cpu.quota must be an integer, not "50%"'),
    ("linux.resources", {"pids": {"limit": False}},
     "config.json: linux.resources.pids.limit must be an integer, not false"),
    ("linux.resources", {"devices": [{"allow": True, "access": "rwx"}]},
     'config.json: linux.resources.devices[0].access must be letters from "rwm", not "rwx"'),
    ("linux.resources", {"devices": [{"access": "rwm"}]},
     "config.json: linux.resources.devices[0].allow is missing"),
    ("linux.resources", {"unified": {"memory.high": "1G"}},
     "config.json: linux.resources.unified is not supported by kata-py"),
    ("linux.resources", {"rdma": {"mlx5_1": {"hcaHandles": 3}}},
     "config.json: linux.resources.rdma is not supported by kata-py"),
    ("linux.namespaces", [{"type": "pid"}, {"type": "pid"}],
     'config.json: linux.namespaces[1].type "pid" is listed twice'),
    ("linux.namespaces", [{"type": "net"}],
     'config.json: linux.namespaces[0].type "net" is not a known namespace type'),
    ("linux.namespaces", [{"type": "network", "path": "netns"}],
     'config.json: linux.namespaces[0].path must be an absolute path, not "netns"'),
    ("linux.uidMappings", [{"containerID": 0, "hostID": 1000}],
     "config.json: linux.uidMappings[0].size is missing"),
    ("linux.devices", [{"path": "/dev/fuse", "type": "x", "major": 10, "minor": 229}],
     'config.json: linux.devices[0].type "x" is not a known device type'),
    ("linux.devices", [{"path": "/dev/fuse", "type": "c"}],
     "config.json: linux.devices[0] needs major and minor numbers for a non-fifo device"),
    ("linux.maskedPaths", ["proc/kcore"],
     'config.json: linux.maskedPaths[0] must be an absolute path, not "proc/kcore"'),
    ("linux.rootfsPropagation", "everywhere",
     'config.json: linux.rootfsPropagation "everywhere" is not a known mount propagation'),
    ("linux.sysctl", {"net.ipv4.ip_forward": 1},
     'config.json: linux.sysctl["net.ipv4.ip_forward"] must be a string, not 1'),
    ("linux.intelRdt", {"closID": "guaranteed_group"},
     "config.json: linux.intelRdt is not supported by kata-py"),
    ("linux.memoryPolicy", {"mode": "MPOL_BIND", "nodes": "0"},
     "config.json: linux.memoryPolicy is not supported by kata-py"),
    ("linux.netDevices", {"eth1": {"name": "eth1"}},
     "config.json: linux.netDevices is not supported by kata-py"),
    ("linux.timeOffsets", {"monotonic": {"secs": 1}},
     "config.json: linux.timeOffsets is not supported by kata-py"),
    ("linux.personality", {"domain": "LINUX32"},
     "config.json: linux.personality.domain LINUX32 is not supported by kata-py"),
    ("linux.seccomp", NOTIFY,
     "config.json: linux.seccomp.syscalls[0].action SCMP_ACT_NOTIFY is not supported by "
     "kata-py"),
    ("linux.seccomp", {"defaultAction": "SCMP_ACT_NOTIFY"},
     "config.json: linux.seccomp.defaultAction SCMP_ACT_NOTIFY is not supported by kata-py"),
    ("linux.seccomp", {"defaultAction": "SCMP_ACT_BOGUS"},
     'config.json: linux.seccomp.defaultAction "SCMP_ACT_BOGUS" is not a known seccomp '
     "action"),
    ("linux.seccomp", {"architectures": ["SCMP_ARCH_X86_64"]},
     "config.json: linux.seccomp.defaultAction is missing"),
    ("linux.seccomp", BAD_OP,
     'config.json: linux.seccomp.syscalls[0].args[0].op "SCMP_CMP_XX" is not a known '
     "seccomp operator"),
    ("linux.seccomp", {"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_X"]},
     'config.json: linux.seccomp.flags[0] "SECCOMP_FILTER_FLAG_X" is not a known seccomp flag'),
    ("linux.seccomp", {"defaultAction": "SCMP_ACT_ALLOW",
                       "syscalls": [{"names": [], "action": "SCMP_ACT_ALLOW"}]},
     "config.json: linux.seccomp.syscalls[0].names must not be empty"),
    ("solaris", {"milestone": "svc:/milestone/container:default"},
     "config.json: solaris is not supported by kata-py"),
    ("windows", {"layerFolders": []}, "config.json: windows is not supported by kata-py"),
    ("vm", {"kernel": {"path": "/vmlinuz"}}, "config.json: vm is not supported by kata-py"),
    ("zos", {}, "config.json: zos is not supported by kata-py"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD_INPUTS,
                         ids=[f"{p}={json.dumps(v) if v is not DELETE else 'deleted'}"[:60]
                              for p, v, _ in BAD_INPUTS])
def test_bad_input_is_rejected_with_a_message_naming_its_path(
        bundle: Path, path: str, value: object, message: str) -> None:
    err = error_of(patched(path, value if value is DELETE else copy.deepcopy(value)), bundle)
    assert err.message == message
    assert err.hint


def test_a_document_that_is_not_an_object_is_rejected(bundle: Path) -> None:
    assert error_of([], bundle).message == "config.json: the document must be an object, not []"


def test_missing_rootfs_is_named_with_its_absolute_path(tmp_path: Path) -> None:
    err = error_of(minimal(), tmp_path)
    assert err.message == f"config.json: root.path {tmp_path.resolve()}/rootfs does not exist"


def test_rootfs_that_is_a_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "rootfs").write_text("")
    err = error_of(minimal(), tmp_path)
    assert err.message == (f"config.json: root.path {tmp_path.resolve()}/rootfs "
                           "is not a directory")


def test_error_string_is_message_then_hint(bundle: Path) -> None:
    err = error_of(patched("process.args", []), bundle)
    assert str(err) == ('config.json: process.args must not be empty: set process.args to the '
                        'command to run, e.g. ["sh"]')


# --- load_spec: reading the file ---------------------------------------------

def test_load_spec_reads_config_json_from_the_bundle(bundle: Path) -> None:
    (bundle / "config.json").write_text(json.dumps(default_spec()))
    assert load_spec(bundle).hostname == "runc"


def test_load_spec_reports_malformed_json_with_line_and_column(bundle: Path) -> None:
    (bundle / "config.json").write_text('{\n  "ociVersion": "1.2.0",\n  oops\n}\n')
    with pytest.raises(ConfigError) as caught:
        load_spec(bundle)
    assert caught.value.message == (
        "config.json is not valid JSON (line 3, column 3: "
        "Expecting property name enclosed in double quotes)")


def test_load_spec_without_config_json_names_the_bundle(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_spec(tmp_path)
    assert caught.value.message == f"config.json not found in bundle {tmp_path}"


def test_process_console_size_user_and_env_parse(bundle: Path) -> None:
    doc = minimal()
    doc["process"].update({"consoleSize": {"height": 24, "width": 80}, "env": ["A=1"],
                           "user": {"uid": 1000, "gid": 100, "additionalGids": [10]}})
    process = parse_spec(doc, bundle).process
    assert (process.console_size and process.console_size.width) == 80
    assert process.env == ("A=1",)
    assert (process.user.uid, process.user.gid, process.user.additional_gids) == (1000, 100, (10,))


def test_host_only_cgroup_knobs_are_accepted_and_logged_as_ignored(
        bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    resources = {"memory": {"limit": 1 << 30, "kernelTCP": 1}, "cpu": {"burst": 1}}
    with caplog.at_level(logging.DEBUG, logger="kata_py.spec_reader"):
        parse_spec(patched("linux", {"resources": resources}), bundle)
    assert ("config.json: ignoring linux.resources.cpu.burst (no effect in a VM sandbox)"
            in caplog.messages)


# --- what the guest could not run: refused before a VM boots ------------------

def test_the_highest_uid_and_gids_below_the_unchanged_marker_are_accepted(
        bundle: Path) -> None:
    user = {"uid": 4294967294, "gid": 4294967294, "additionalGids": [4294967294]}
    parsed = parse_spec(patched("process.user", user), bundle).process.user
    assert (parsed.uid, parsed.gid, parsed.additional_gids) == (
        4294967294, 4294967294, (4294967294,))


def test_a_uid_of_minus_one_as_uid_t_is_refused_with_why(bundle: Path) -> None:
    err = error_of(patched("process.user", {"uid": 4294967295}), bundle)
    assert err.hint == ('use an id from 0 to 4294967294; 4294967295 is (uid_t)-1, which '
                        'setresuid(2) takes as "leave the id unchanged"')


@pytest.mark.parametrize("limit", [16 << 20, 0, -1, 1 << 40])
def test_memory_limits_from_16_mib_and_no_limit_are_accepted(bundle: Path, limit: int) -> None:
    spec = parse_spec(patched("linux", {"resources": {"memory": {"limit": limit}}}), bundle)
    assert spec.linux.resources is not None and spec.linux.resources.memory is not None
    assert spec.linux.resources.memory.limit == limit


def test_a_too_small_memory_limit_names_the_minimum_and_the_way_out(bundle: Path) -> None:
    err = error_of(patched("linux", {"resources": {"memory": {"limit": 1}}}), bundle)
    assert str(err) == ("config.json: linux.resources.memory.limit must be at least 16777216 "
                        "(16 MiB), not 1: kata-py builds each container with a Python launcher "
                        "inside its memory cgroup; give it 16m or more, or -1 for no limit")


def _env_of(total: int) -> list[str]:
    """Environment strings that, with args ["sh"], take exactly `total` bytes of
    execve's space (each string's bytes, its NUL and its 8-byte pointer)."""
    left = total - len("sh") - 1 - 8
    env = []
    while left:
        size = min(left, 100_000)
        if 0 < left - size < 9:           # keep the last piece a whole string
            size -= 9
        env.append("x" * (size - 9))
        left -= size
    return env


def test_args_and_env_that_fill_execve_space_exactly_are_accepted(bundle: Path) -> None:
    env = _env_of(2 << 20)            # a quarter of the guest's 8 MiB stack rlimit
    assert parse_spec(patched("process.env", env), bundle).process.env == tuple(env)


def test_args_and_env_beyond_execve_space_are_refused_naming_both(bundle: Path) -> None:
    err = error_of(patched("process.env", _env_of((2 << 20) + 1)), bundle)
    assert str(err) == (
        "config.json: process.args and process.env are 2097153 bytes together, more than the "
        "2097152 execve(2) takes with RLIMIT_STACK 8388608: shorten them; Linux gives "
        "arguments and environment a quarter of RLIMIT_STACK, at most 6 MiB, and fails execve "
        "with E2BIG beyond it")


def test_execve_space_follows_the_process_stack_rlimit_up_to_6_mib(bundle: Path) -> None:
    doc = patched("process.env", _env_of(6 << 20))
    doc["process"]["rlimits"] = [{"type": "RLIMIT_STACK", "soft": 2**64 - 1, "hard": 2**64 - 1}]
    parse_spec(doc, bundle)
    doc["process"]["env"] = _env_of((6 << 20) + 1)
    assert error_of(doc, bundle).message == (
        "config.json: process.args and process.env are 6291457 bytes together, more than the "
        "6291456 execve(2) takes with RLIMIT_STACK 18446744073709551615")
    doc["process"]["rlimits"] = [{"type": "RLIMIT_STACK", "soft": 1 << 19, "hard": 1 << 20}]
    doc["process"]["env"] = _env_of((128 << 10) + 1)     # a quarter of 512 KiB is below ARG_MAX
    assert error_of(doc, bundle).message == (
        "config.json: process.args and process.env are 131073 bytes together, more than the "
        "131072 execve(2) takes with RLIMIT_STACK 524288")


NS = [{"type": t} for t in ("pid", "mount", "ipc", "uts", "network")]


@pytest.mark.parametrize(("sysctl", "namespaces", "message"), [
    ("kernel.shmmax", ["pid", "mount"], 'linux.sysctl["kernel.shmmax"] sets an IPC sysctl but '
     "the container has no IPC namespace of its own"),
    ("fs.mqueue.msg_max", ["mount"], 'linux.sysctl["fs.mqueue.msg_max"] sets an IPC sysctl '
     "but the container has no IPC namespace of its own"),
    ("net.ipv4.ip_forward", ["ipc"], 'linux.sysctl["net.ipv4.ip_forward"] sets a network '
     "sysctl but the container has no network namespace of its own"),
    ("kernel.hostname", ["uts"], 'linux.sysctl["kernel.hostname"] conflicts with the hostname '
     "field"),
    ("kernel.domainname", ["ipc"], 'linux.sysctl["kernel.domainname"] is not in a kernel '
     "namespace of the container's own"),
    ("vm.overcommit_memory", ["ipc", "uts", "network"], 'linux.sysctl["vm.overcommit_memory"] '
     "is not in a kernel namespace of the container's own"),
])
def test_a_sysctl_outside_the_containers_own_namespaces_is_refused_as_runc_does(
        bundle: Path, sysctl: str, namespaces: list[str], message: str) -> None:
    doc = minimal()
    doc["linux"] = {"namespaces": [{"type": t} for t in namespaces], "sysctl": {sysctl: "1"}}
    err = error_of(doc, bundle)
    assert err.message == f"config.json: {message}"
    assert err.hint


def test_sysctls_in_namespaces_the_container_owns_are_accepted(bundle: Path) -> None:
    doc = minimal()
    doc["linux"] = {"namespaces": NS,
                    "sysctl": {"kernel.shmmax": "1", "fs.mqueue.msg_max": "20",
                               "net.ipv4.ping_group_range": "0 0", "kernel.domainname": "d"}}
    linux = parse_spec(doc, bundle).linux
    assert linux is not None and len(linux.sysctl) == 4
    doc["linux"]["namespaces"] = [{"type": "network", "path": "/run/netns/x"}]
    doc["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}       # the engine's netns, mirrored
    linux = parse_spec(doc, bundle).linux
    assert linux is not None and linux.sysctl == {"net.ipv4.ip_forward": "1"}


def test_a_huge_page_size_the_guest_lacks_is_refused_and_known_ones_become_limits(
        bundle: Path) -> None:
    doc = minimal()
    doc["linux"] = {"resources": {"hugepageLimits": [{"pageSize": "2MB", "limit": 0},
                                                     {"pageSize": "4MB", "limit": 1}]}}
    err = error_of(doc, bundle)
    assert err.message == ('config.json: linux.resources.hugepageLimits[1].pageSize "4MB": the '
                           "guest kernel has no huge pages of that size")
    assert err.hint == "use one of 2MB, 1GB"
    del doc["linux"]["resources"]["hugepageLimits"][1]
    launch, _ = to_launch_config(parse_spec(doc, bundle), "c1")
    assert launch.cgroup is not None
    assert launch.cgroup.resources.unified == {"hugetlb.2MB.max": "0"}
