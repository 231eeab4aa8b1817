"""Host spec → guest launch description and the host paths to share."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from kata_py import translate
from kata_py.agent import launch_config as lc
from kata_py.agent import launcher, seccomp
from kata_py.errors import ConfigError
from kata_py.spec import Spec, parse_spec
from kata_py.spec_default import default_spec
from kata_py.translate import GUEST_SHARE, _seccomp, check_size, to_launch_config

FIXTURE = Path(__file__).parent / "fixtures" / "spec" / "podman.json"


def _spec(tmp_path: Path, data: dict[str, Any]) -> Spec:
    (tmp_path / "rootfs").mkdir(exist_ok=True)
    data["root"]["path"] = "rootfs"
    return parse_spec(data, tmp_path)


def _podman(tmp_path: Path) -> Spec:
    return _spec(tmp_path, json.loads(FIXTURE.read_text()))


def test_default_spec_becomes_a_launch_description_that_round_trips(tmp_path: Path) -> None:
    config, shares = to_launch_config(_spec(tmp_path, default_spec()), "c1")
    assert config.rootfs == f"{GUEST_SHARE}/c1/rootfs"
    assert shares[0].source == tmp_path / "rootfs" and shares[0].target == "c1/rootfs"
    assert {ns.type for ns in config.namespaces} >= {"pid", "network", "ipc", "uts", "mount"}
    assert config.process.args == ("sh",) and config.process.terminal
    assert "/proc/kcore" in config.masked_paths
    assert config.cgroup is not None and config.cgroup.path == "kata-py/c1"
    assert lc.from_json(lc.to_json(config)) == config


def test_in_container_hooks_and_their_state_travel_to_the_guest(tmp_path: Path) -> None:
    data = default_spec()
    data["annotations"] = {"a": "b"}
    data["hooks"] = {"createContainer": [{"path": "/bin/cc", "args": ["cc", "-x"], "timeout": 5}],
                     "startContainer": [{"path": "/bin/sc", "env": ["K=V"]}],
                     "prestart": [{"path": "/host/only"}]}
    config, _ = to_launch_config(_spec(tmp_path, data), "c1", str(tmp_path))
    assert config.hooks.create_container == (lc.Hook("/bin/cc", ("cc", "-x"), (), 5),)
    assert config.hooks.start_container == (lc.Hook("/bin/sc", (), ("K=V",), None),)
    assert config.state == {"ociVersion": data["ociVersion"], "id": "c1",
                            "bundle": str(tmp_path), "annotations": {"a": "b"}}
    assert lc.from_json(lc.to_json(config)) == config


def test_a_container_always_gets_its_own_cgroup_namespace_in_the_guest(tmp_path: Path
                                                                       ) -> None:
    data = default_spec()
    data["linux"]["namespaces"] = [ns for ns in data["linux"]["namespaces"]
                                   if ns["type"] != "cgroup"]       # podman on a v1 host
    config, _ = to_launch_config(_spec(tmp_path, data), "c1")
    assert [ns.type for ns in config.namespaces].count("cgroup") == 1


def test_podman_binds_are_shared_and_rewritten(tmp_path: Path) -> None:
    config, shares = to_launch_config(_podman(tmp_path), "c2")
    binds = {m.destination: m for m in config.mounts if m.type == "bind"}
    assert set(binds) >= {"/etc/hosts", "/etc/resolv.conf", "/data"}
    data = binds["/data"]
    assert data.source.startswith(f"{GUEST_SHARE}/c2/mounts/") and data.source.endswith("/data")
    share = next(s for s in shares if s.source == Path("/srv/data"))
    assert f"{GUEST_SHARE}/{share.target}" == data.source
    kernel = {m.destination: m.type for m in config.mounts if m.type != "bind"}
    assert kernel["/proc"] == "proc" and kernel["/dev/pts"] == "devpts"


def test_host_network_namespace_path_is_not_joined_in_the_guest(tmp_path: Path) -> None:
    config, _ = to_launch_config(_podman(tmp_path), "c3")
    assert "network" not in {ns.type for ns in config.namespaces}
    assert all(ns.path == "" for ns in config.namespaces)


def test_seccomp_profile_is_compiled_on_the_host(tmp_path: Path) -> None:
    spec = _podman(tmp_path)
    config, _ = to_launch_config(spec, "c4")
    assert config.seccomp_program
    # The profile's JSON form compiles to the program the description carries,
    # and that program is what the launcher installs.
    assert spec.linux is not None and spec.linux.seccomp is not None
    program, flags = seccomp.compile_description(json.loads(json.dumps(
        _seccomp(spec.linux.seccomp))))
    sent = lc.from_json(lc.to_json(config))
    assert base64.b64decode(sent.seccomp_program) == program and sent.seccomp_flags == flags
    installed = launcher.seccomp_filter(sent)
    assert installed is not None and (installed.program, installed.flags) == (program, flags)


def test_a_seccomp_profile_the_compiler_refuses_is_a_config_error(tmp_path: Path) -> None:
    data = default_spec()
    # Valid as a spec, but more BPF than the kernel takes: refused at create,
    # on the host, before any VM starts.
    data["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": i % 6, "value": v, "op": "SCMP_CMP_EQ"}]}
        for i in range(6) for v in range(400)]}
    with pytest.raises(ConfigError, match=r"linux\.seccomp: the filter needs \d+ BPF"):
        to_launch_config(_spec(tmp_path, data), "c4b")


def test_resources_become_the_guest_cgroup(tmp_path: Path) -> None:
    data = default_spec()
    data["linux"]["resources"] = {"memory": {"limit": 64 << 20}, "pids": {"limit": 20},
                                  "cpu": {"quota": 50000, "period": 100000}}
    config, _ = to_launch_config(_spec(tmp_path, data), "c5")
    assert config.cgroup is not None
    r = config.cgroup.resources
    assert (r.memory_limit, r.pids_limit, r.cpu_quota, r.cpu_period) == (64 << 20, 20, 50000,
                                                                          100000)


@pytest.mark.parametrize("namespaces,message", [
    ([{"type": "user", "path": "/proc/1/ns/user"}], "joining the user namespace at"),
    ([{"type": "ipc", "path": "/proc/1/ns/ipc"}], "joining the ipc namespace at /proc/1/ns/ipc"),
])
def test_namespaces_kata_py_cannot_honour_are_refused(tmp_path: Path, namespaces: Any,
                                                      message: str) -> None:
    data = default_spec()
    data["linux"]["namespaces"] = namespaces
    with pytest.raises(ConfigError, match=message):
        to_launch_config(_spec(tmp_path, data), "c6")


USERNS = [{"type": "user"}, {"type": "mount"}, {"type": "pid"}]
ROOT_RANGE = [{"containerID": 0, "hostID": 100000, "size": 65536}]


def test_a_user_namespace_carries_its_id_maps_to_the_guest(tmp_path: Path) -> None:
    data = default_spec()
    data["linux"].update(namespaces=USERNS, uidMappings=ROOT_RANGE,
                         gidMappings=[{"containerID": 0, "hostID": 200000, "size": 1},
                                      {"containerID": 1, "hostID": 300000, "size": 99}])
    config, _ = to_launch_config(_spec(tmp_path, data), "u1")
    assert config.uid_mappings == (lc.IdMapping(0, 100000, 65536),)
    assert launcher.id_map(config.gid_mappings) == b"0 200000 1\n1 300000 99\n"
    assert lc.from_json(lc.to_json(config)) == config
    assert "user" in [ns.type for ns in config.namespaces]


@pytest.mark.parametrize("change,message", [
    ({"uidMappings": []}, r"linux.uidMappings: a new user namespace needs it"),
    ({"namespaces": [{"type": "mount"}]},
     r"linux.uidMappings/gidMappings are set but linux.namespaces has no new user namespace"),
    ({"uidMappings": [{"containerID": 1, "hostID": 100000, "size": 10}]},
     r"linux.uidMappings: container id 0 is not mapped"),
    ({"uidMappings": [{"containerID": 0, "hostID": 100000, "size": 10},
                      {"containerID": 5, "hostID": 200000, "size": 10}]},
     r"linux.uidMappings: two containerID ranges overlap"),
    ({"gidMappings": [{"containerID": 0, "hostID": 100000, "size": 10},
                      {"containerID": 10, "hostID": 100005, "size": 10}]},
     r"linux.gidMappings: two hostID ranges overlap"),
    ({"uidMappings": [{"containerID": 0, "hostID": 4294967290, "size": 10}]},
     r"linux.uidMappings: a range ends beyond id 4294967295"),
    ({"uidMappings": [{"containerID": i, "hostID": 100000 + i, "size": 1} for i in range(341)]},
     r"linux.uidMappings: 341 entries, the kernel takes at most 340"),
])
def test_id_maps_the_kernel_would_refuse_are_refused_before_a_vm_boots(
        tmp_path: Path, change: dict[str, Any], message: str) -> None:
    data = default_spec()
    data["linux"].update(namespaces=USERNS, uidMappings=ROOT_RANGE, gidMappings=ROOT_RANGE)
    data["linux"].update(change)
    with pytest.raises(ConfigError, match=message):
        to_launch_config(_spec(tmp_path, data), "u2")


def test_the_processs_ids_must_be_mapped(tmp_path: Path) -> None:
    data = default_spec()
    data["linux"].update(namespaces=USERNS, uidMappings=ROOT_RANGE,
                         gidMappings=[{"containerID": 0, "hostID": 100000, "size": 10}])
    data["process"]["user"] = {"uid": 1000, "gid": 0, "additionalGids": [20]}
    with pytest.raises(ConfigError, match=r"gidMappings: container id 20 is not mapped"):
        to_launch_config(_spec(tmp_path, data), "u3")


def test_relative_bind_source_is_refused(tmp_path: Path) -> None:
    data = default_spec()
    data["mounts"].append({"destination": "/x", "type": "bind", "source": "rel",
                           "options": ["rbind"]})
    with pytest.raises(ConfigError, match=r"mounts\[\d+\].source 'rel' must be an absolute"):
        to_launch_config(_spec(tmp_path, data), "c7")


def test_a_memory_limit_of_0_means_no_limit_in_the_guest_as_in_runc(tmp_path: Path) -> None:
    data = default_spec()
    data["linux"]["resources"] = {"memory": {"limit": 0}}
    config, _ = to_launch_config(_spec(tmp_path, data), "c9")
    assert config.cgroup is not None and config.cgroup.resources.memory_limit is None


def test_a_description_over_the_agents_message_limit_is_refused_at_create(
        tmp_path: Path) -> None:
    data = default_spec()
    data["annotations"] = {f"a{i}": "x" * (1 << 20) for i in range(17)}
    with pytest.raises(ConfigError) as caught:
        to_launch_config(_spec(tmp_path, data), "c10")
    annotations = len(json.dumps(data["annotations"]))
    assert re.fullmatch(r"config\.json: the launch description is \d+ bytes, more than the "
                        rf"16711680 the agent accepts \(annotations: {annotations} bytes of it\)",
                        caught.value.message), caught.value.message
    assert caught.value.hint == "shrink annotations"


def test_the_size_refusal_names_the_largest_part_and_the_exact_sizes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = default_spec()
    data["process"]["env"] = [f"V{i}={'x' * 1000}" for i in range(10)]
    data["annotations"] = {"a": "x" * 5000}
    config, _ = to_launch_config(_spec(tmp_path, data), "c11")
    size = len(lc.to_json(config).encode())
    monkeypatch.setattr(translate, "DESCRIPTION_MAX_BYTES", size - 1)
    with pytest.raises(ConfigError) as caught:
        check_size(config, "exec")
    env_bytes = len(json.dumps(data["process"]["env"]))
    assert str(caught.value) == (f"exec: the launch description is {size} bytes, more than the "
                                 f"{size - 1} the agent accepts (process.env: {env_bytes} "
                                 "bytes of it): shrink process.env")
    monkeypatch.setattr(translate, "DESCRIPTION_MAX_BYTES", size)
    check_size(config, "exec")
