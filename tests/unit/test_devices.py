"""kata_py.agent.devices: rules → policy (runc's emulator), policy → eBPF on a
small interpreter, then the real kernel: the program attached to a cgroup of
this host's cgroup v2 hierarchy, a forked child moved in, and the launcher
building a container (and an exec into it) under it."""

from __future__ import annotations

import base64
import errno
import json
import os
import stat
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kata_py.agent import cgroups, devices, launch_config, launcher, syscalls
from kata_py.agent.devices import (
    BPF_DEVCG_ACC_MKNOD,
    BPF_DEVCG_ACC_READ,
    BPF_DEVCG_ACC_WRITE,
    BPF_DEVCG_DEV_BLOCK,
    BPF_DEVCG_DEV_CHAR,
    WILDCARD,
    DeviceFilterError,
    DeviceRuleError,
    Policy,
    Rule,
)
from kata_py.agent.launch_config import Cgroup, Namespace
from kata_py.errors import ConfigError
from kata_py.spec import parse_spec
from kata_py.spec_default import default_spec
from kata_py.translate import to_launch_config

from .test_launcher import (  # noqa: F401 - fixtures
    ALL_NAMESPACES,
    cgroup2,
    launch,
    make_config,
    no_mounts_leak,
    rootfs,
    running,
)

DENY_ALL = Rule(False)
ALLOW_ALL = Rule(True)
_ACCESS = {"m": BPF_DEVCG_ACC_MKNOD, "r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE}
_TYPES = {"b": BPF_DEVCG_DEV_BLOCK, "c": BPF_DEVCG_DEV_CHAR}
_U32 = 0xFFFF_FFFF


def run_program(program: bytes, dev_type: str, major: int, minor: int, access: str) -> int:
    """Interpret the eBPF subset the compiler emits, on a struct bpf_cgroup_dev_ctx."""
    bits = sum(_ACCESS[c] for c in access)
    ctx = struct.pack("<III", (bits << 16) | _TYPES[dev_type], major, minor)
    regs: list[int | None] = [0] * 11
    regs[1] = None                       # the context pointer

    def val(r: int) -> int:
        v = regs[r]
        assert v is not None, f"r{r} is the context pointer here"
        return v & _U32
    pc = 0
    while True:
        code, reg, off, imm = struct.unpack_from("<BBhi", program, 8 * pc)
        dst, src = reg & 0xF, reg >> 4
        pc += 1
        if code == 0x61:                 # ldxw dst, [src + off]
            assert regs[src] is None and off in (0, 4, 8)
            regs[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif code == 0x54:
            regs[dst] = val(dst) & (imm & _U32)
        elif code == 0x74:
            regs[dst] = val(dst) >> imm
        elif code == 0xB4:
            regs[dst] = imm & _U32
        elif code == 0xBC:
            regs[dst] = val(src)
        elif code == 0x16:
            pc += off if val(dst) == imm & _U32 else 0
        elif code == 0x56:
            pc += off if val(dst) != imm & _U32 else 0
        elif code == 0x5E:
            pc += off if val(dst) != val(src) else 0
        elif code == 0x95:
            return val(0)
        else:
            raise AssertionError(f"pc {pc - 1}: opcode {code:#x} not expected")


def policy_of(*rules: Rule, paths: tuple[str, ...] = ()) -> Policy:
    """What a container with these spec rules (and linux.devices paths) gets."""
    return devices.reduce_rules(devices.container_rules(rules, paths))


# --- the rules, reduced as runc's emulator does ---------------------------------

def test_no_rules_at_all_still_refuses_all_but_runc_s_defaults() -> None:
    policy = policy_of()
    assert not policy.default_allow
    for allowed in (("c", 1, 3, "rw"), ("c", 1, 5, "r"), ("c", 1, 9, "rw"), ("c", 5, 0, "rw"),
                    ("c", 5, 2, "rw"), ("c", 136, 7, "rw"), ("c", 10, 200, "rw"),
                    ("c", 1, 11, "m"), ("b", 254, 0, "m")):
        assert policy.permits(*allowed), allowed
    for refused in (("c", 1, 11, "r"), ("b", 254, 0, "r"), ("b", 254, 0, "w"),
                    ("c", 5, 1, "rw"), ("c", 1, 1, "r"), ("c", 4, 0, "w")):
        assert not policy.permits(*refused), refused


def test_a_deny_all_rule_gives_the_same_policy_as_none() -> None:
    assert policy_of(DENY_ALL) == policy_of()


def test_later_rules_override_earlier_ones() -> None:
    policy = policy_of(DENY_ALL, Rule(True, "c", 1, 11, "rw"), Rule(False, "c", 1, 11, "w"))
    assert policy.permits("c", 1, 11, "r")
    assert not policy.permits("c", 1, 11, "w") and not policy.permits("c", 1, 11, "rw")


def test_exceptions_for_one_device_merge() -> None:
    policy = policy_of(DENY_ALL, Rule(True, "b", 254, 0, "r"), Rule(True, "b", 254, 0, "w"))
    assert policy.permits("b", 254, 0, "rw")
    assert [ex for ex in policy.exceptions if ex.type == "b" and ex.major == 254] == \
        [Rule(True, "b", 254, 0, "rw")]


def test_a_wildcard_type_rule_resets_everything_whatever_its_numbers() -> None:
    policy = devices.reduce_rules([Rule(True, "c", 1, 11), Rule(False, "a", 1, 3, "r")])
    assert policy == Policy(False, ())
    policy = devices.reduce_rules([DENY_ALL, Rule(True, "c", 1, 11), ALLOW_ALL])
    assert policy == Policy(True, ())


def test_allow_all_then_deny_refuses_any_access_the_rule_names() -> None:
    """cgroup v1's rule for deny exceptions: an O_RDWR open is refused by a
    `w` deny (runc's program would let it through)."""
    policy = devices.reduce_rules([ALLOW_ALL, Rule(False, "c", 1, 5, "w")])
    assert policy == Policy(True, (Rule(False, "c", 1, 5, "w"),))
    assert policy.permits("c", 1, 5, "r")
    assert not policy.permits("c", 1, 5, "w") and not policy.permits("c", 1, 5, "rw")
    assert policy.permits("c", 1, 3, "rw")


def test_an_allow_exception_must_grant_every_access_asked_for() -> None:
    policy = devices.reduce_rules([DENY_ALL, Rule(True, "c", 1, WILDCARD, "r"),
                                   Rule(True, "c", 1, 3, "w")])
    assert policy.permits("c", 1, 3, "r") and policy.permits("c", 1, 3, "w")
    assert not policy.permits("c", 1, 3, "rw")       # no single exception grants both


def test_a_linux_devices_node_replaces_the_default_rule_of_its_path() -> None:
    """runc's createDevices: the spec's /dev/zero wins over the default one,
    rule and all, and the node gets no rule of its own."""
    policy = policy_of(DENY_ALL, paths=("/dev/zero", "/dev/fuse"))
    assert not policy.permits("c", 1, 5, "r")
    assert not policy.permits("c", 10, 229, "rw")
    assert policy.permits("c", 1, 3, "rw") and policy.permits("c", 10, 229, "m")


def test_taking_access_back_from_a_wider_rule_is_refused_with_the_rule_named() -> None:
    rules = [DENY_ALL, Rule(True, "c", 1, WILDCARD, "rw"), Rule(False, "c", 1, 3, "w")]
    with pytest.raises(DeviceRuleError, match=r"linux\.resources\.devices\[2\] \(deny c 1:3 w\) "
                                              r"cannot take access back from the earlier "
                                              r"wider rule allow c 1:\* rw"):
        devices.compile_filter(rules, ())
    # the same device, or access the wider rule does not grant, is fine
    devices.reduce_rules([*rules[:2], Rule(False, "c", 1, 3, "m"), Rule(False, "c", 1, 4, "m")])
    devices.reduce_rules([ALLOW_ALL, Rule(False, "b", 8, 0), Rule(True, "b", 8, 0)])


def test_a_default_rule_that_would_punch_a_hole_is_named_as_runc_s() -> None:
    with pytest.raises(DeviceRuleError, match=r"runc's default rule allow c 1:3 rwm"):
        devices.compile_filter([ALLOW_ALL, Rule(False, "c", 1, WILDCARD, "rw")], ())


@pytest.mark.parametrize("rule,message", [
    (Rule(True, "x"), "type 'x' is not a, b or c"),
    (Rule(True, "c", 1, 3, "rwx"), 'access \'rwx\' must be letters of "rwm"'),
    (Rule(True, "c", 1, 3, ""), "access '' must be"),
    (Rule(True, "c", 1 << 32, 3), "major 4294967296 is out of range"),
])
def test_rules_the_kernel_cannot_take_are_refused(rule: Rule, message: str) -> None:
    with pytest.raises(DeviceRuleError, match=rf"rule 0: {message}"):
        devices.reduce_rules([rule])


def test_rules_print_in_cgroup_v1_form() -> None:
    assert str(Rule(True, "c", 136, WILDCARD, "rw")) == "allow c 136:* rw"
    assert str(DENY_ALL) == "deny a *:* rwm"


# --- the program ------------------------------------------------------------------

POLICIES = [
    policy_of(),
    policy_of(DENY_ALL, Rule(True, "b", 254, WILDCARD, "r"), Rule(True, "c", 1, 11, "w")),
    devices.reduce_rules([ALLOW_ALL, Rule(False, "c", 1, 5, "w"), Rule(False, "b", 254, 0),
                          Rule(False, "c", WILDCARD, 9, "rm")]),
    devices.reduce_rules([DENY_ALL, Rule(True, "c", 0xFFFF_FFFF, 0x8000_0000, "r")]),
    devices.reduce_rules([DENY_ALL]),
    devices.reduce_rules([ALLOW_ALL]),
]


@pytest.mark.parametrize("policy", POLICIES)
def test_the_program_decides_as_the_policy(policy: Policy) -> None:
    program = devices.compile_program(policy)
    for dev_type in ("b", "c"):
        for major in (0, 1, 5, 10, 136, 254, 0xFFFF_FFFF):
            for minor in (0, 3, 5, 9, 11, 200, 0x8000_0000):
                for access in ("m", "r", "w", "rw"):
                    want = policy.permits(dev_type, major, minor, access)
                    got = run_program(program, dev_type, major, minor, access)
                    assert got == int(want), (dev_type, major, minor, access)


def test_the_program_is_a_header_a_block_per_exception_and_the_default() -> None:
    policy = devices.reduce_rules([DENY_ALL, Rule(True, "c", 1, 3), Rule(True, "c", 1, 5, "r"),
                                   Rule(True, "c", 136, WILDCARD)])
    insns = len(devices.compile_program(policy)) // 8
    # 6 loads; 1:3 rwm: type, major, minor, ret (2); 1:5 r: + 3 for access; 136:*: 4
    assert insns == 6 + 5 + 8 + 4 + 2


def test_the_bpf_syscall_number_is_x86_64_s() -> None:
    assert devices._SYS_BPF == syscalls.X86_64["bpf"]


# --- the host side: config.json → the launch description -------------------------

def _spec(tmp_path: Path, linux: dict[str, Any]) -> Any:
    data = default_spec()
    data["linux"].update(linux)
    (tmp_path / "rootfs").mkdir(exist_ok=True)
    data["root"]["path"] = "rootfs"
    return parse_spec(data, tmp_path)


def test_the_host_compiles_the_rules_into_the_launch_description(tmp_path: Path) -> None:
    spec = _spec(tmp_path, {
        "resources": {"devices": [{"allow": False, "access": "rwm"},
                                  {"allow": True, "type": "b", "major": 254, "access": "r"}]},
        "devices": [{"path": "/dev/zero", "type": "c", "major": 1, "minor": 5}]})
    config, _ = to_launch_config(spec, "c1")
    assert config.cgroup is not None
    sent = launch_config.from_json(launch_config.to_json(config))
    assert sent.cgroup is not None
    want = devices.compile_filter([DENY_ALL, Rule(True, "b", 254, WILDCARD, "r")], ["/dev/zero"])
    assert base64.b64decode(sent.cgroup.device_program) == want


def test_a_spec_without_linux_section_still_gets_runc_s_defaults(tmp_path: Path) -> None:
    data = default_spec()
    del data["linux"]
    (tmp_path / "rootfs").mkdir()
    data["root"]["path"] = "rootfs"
    config, _ = to_launch_config(parse_spec(data, tmp_path), "c1")
    assert config.cgroup is not None
    assert base64.b64decode(config.cgroup.device_program) == devices.compile_filter([], [])


def test_rules_runc_would_refuse_are_a_config_error(tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"resources": {"devices": [
        {"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 1,
                                            "access": "rwm"},
        {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "r"}]}})
    with pytest.raises(ConfigError, match=r"linux\.resources\.devices\[2\] \(deny c 1:3 r\)"):
        to_launch_config(spec, "c1")


# --- the launcher: attach or fail ------------------------------------------------

def test_the_launcher_attaches_before_joining_and_names_linux_resources_devices_on_failure(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[str] = []
    monkeypatch.setattr(cgroups, "create", lambda cg: tmp_path)
    monkeypatch.setattr(cgroups, "apply", lambda path, res: calls.append("apply"))
    monkeypatch.setattr(cgroups, "join", lambda path: calls.append("join"))

    def refuse(program: bytes, cgroup: Path) -> None:
        calls.append(f"attach {program!r} {cgroup}")
        raise DeviceFilterError(errno.EPERM, "BPF_PROG_ATTACH: Operation not permitted")
    monkeypatch.setattr(devices, "attach", refuse)
    config = make_config(tmp_path, ("true",), cgroup=Cgroup(
        "kata-py/c1", device_program=base64.b64encode(b"12345678").decode()))
    with pytest.raises(launcher.LaunchError) as err:
        launcher.setup_cgroup(config)
    assert str(err.value) == (f"linux.resources.devices: attach the device program to "
                              f"{tmp_path}: BPF_PROG_ATTACH: Operation not permitted")
    assert calls == ["apply", f"attach b'12345678' {tmp_path}"]      # never joined
    calls.clear()
    launcher.setup_cgroup(make_config(tmp_path, ("true",), cgroup=Cgroup("kata-py/c1")))
    assert calls == ["apply", "join"]                                 # an exec: none


# --- the real kernel -------------------------------------------------------------

@pytest.fixture
def cgroup(cgroup2: Path) -> Iterator[Path]:  # noqa: F811 - the fixture above
    path = cgroup2 / f"kata-py-test-{os.getpid()}-devices"
    path.mkdir()
    try:
        yield path
    finally:
        for _ in range(100):
            if not (path / "cgroup.procs").read_text().strip():
                break
            time.sleep(0.01)
        path.rmdir()


Try = tuple[str, int | tuple[int, int, int]]


def _in_cgroup(cgroup: Path, tries: list[Try]) -> list[str]:
    """Fork a child into `cgroup` that opens each path with the flags given,
    or mknods it when given (S_IFCHR/S_IFBLK, major, minor); "ok" or the
    errno's name for each."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:    # only os calls here, then _exit
        try:
            os.close(read_end)
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
            out = []
            for path, how in tries:
                try:
                    if isinstance(how, tuple):
                        os.mknod(path, 0o600 | how[0], os.makedev(how[1], how[2]))
                    else:
                        os.close(os.open(path, how))
                    out.append("ok")
                except OSError as exc:
                    out.append(errno.errorcode.get(exc.errno or 0, str(exc.errno)))
            os.write(write_end, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    result: list[str] = json.loads(data)
    return result


def test_attached_program_refuses_what_the_rules_deny(cgroup: Path) -> None:
    devices.attach(devices.compile_program(devices.reduce_rules(
        [DENY_ALL, Rule(True, "c", 1, 3), Rule(True, "c", 1, 5, "r")])), cgroup)
    got = _in_cgroup(cgroup, [("/dev/null", os.O_RDWR), ("/dev/zero", os.O_RDONLY),
                              ("/dev/zero", os.O_WRONLY), ("/dev/zero", os.O_RDWR),
                              ("/dev/full", os.O_RDONLY)])
    assert got == ["ok", "ok", "EPERM", "EPERM", "EPERM"]


def test_attached_deny_exception_refuses_an_open_asking_for_more(cgroup: Path) -> None:
    devices.attach(devices.compile_program(devices.reduce_rules(
        [ALLOW_ALL, Rule(False, "c", 1, 5, "w")])), cgroup)
    got = _in_cgroup(cgroup, [("/dev/zero", os.O_RDONLY), ("/dev/zero", os.O_WRONLY),
                              ("/dev/zero", os.O_RDWR), ("/dev/full", os.O_RDWR)])
    assert got == ["ok", "EPERM", "EPERM", "ok"]


def test_runc_s_defaults_allow_mknod_but_not_opening_the_node(cgroup: Path,
                                                              tmp_path: Path) -> None:
    devices.attach(devices.compile_filter([DENY_ALL], []), cgroup)
    kmsg, loop = str(tmp_path / "kmsg"), str(tmp_path / "loop")
    tries: list[Try] = [(kmsg, (stat.S_IFCHR, 1, 11)), (kmsg, os.O_WRONLY),
                        (loop, (stat.S_IFBLK, 7, 0)), (loop, os.O_RDONLY),
                        ("/dev/null", os.O_RDWR), ("/dev/urandom", os.O_RDONLY)]
    assert _in_cgroup(cgroup, tries) == ["ok", "EPERM", "ok", "EPERM", "ok", "ok"]


def test_without_runc_s_defaults_even_mknod_is_refused(cgroup: Path, tmp_path: Path) -> None:
    devices.attach(devices.compile_program(devices.reduce_rules([DENY_ALL])), cgroup)
    assert _in_cgroup(cgroup, [(str(tmp_path / "zero"), (stat.S_IFCHR, 1, 5))]) == ["EPERM"]


def test_a_program_the_verifier_refuses_carries_its_log() -> None:
    no_exit = devices.compile_program(Policy(True))[:-8]
    with pytest.raises(DeviceFilterError, match=r"BPF_PROG_LOAD: .*verifier: .+") as err:
        devices.load(no_exit)
    assert err.value.errno in (errno.EINVAL, errno.EACCES)
    with pytest.raises(DeviceFilterError, match="7 bytes is not a program"):
        devices.load(b"1234567")


def test_attaching_to_something_not_a_cgroup_fails(tmp_path: Path) -> None:
    with pytest.raises(OSError) as err:
        devices.attach(devices.compile_program(Policy(True)), tmp_path)
    assert err.value.errno in (errno.EBADF, errno.EINVAL, errno.ENOTDIR)


def test_a_container_and_its_exec_open_only_allowed_devices(
        rootfs: Path, cgroup2: Path) -> None:  # noqa: F811 - fixtures
    """The launcher for real: deny-all + runc's defaults, CAP_MKNOD kept."""
    names = [f"kata-py-test-{os.getpid()}-dev{n}" for n in (1, 2)]
    program = base64.b64encode(devices.compile_filter([DENY_ALL], [])).decode()
    namespaces = (*ALL_NAMESPACES, Namespace("cgroup"))

    def config(args: tuple[str, ...], name: str) -> launch_config.LaunchConfig:
        return make_config(rootfs, args, namespaces=namespaces,
                           cgroup=Cgroup(name, root=str(cgroup2), device_program=program))
    script = ("echo x > /dev/null && echo null; head -c1 /dev/zero | wc -c; "
              "mknod /dev/kmsg2 c 1 11 && echo mknod; head -c1 /dev/kmsg2; "
              "mknod /dev/loop9 b 7 9 && head -c1 /dev/loop9; true")
    try:
        result = launch(config(("sh", "-c", script), names[0]))
        assert result.returncode == 0, result
        assert result.stdout.split() == ["null", "1", "mknod"], result
        assert "head: /dev/kmsg2: Operation not permitted" in result.stderr, result
        assert "head: /dev/loop9: Operation not permitted" in result.stderr, result
        # An exec joins the cgroup without a program of its own: still filtered.
        with running(config(("sleep", "30"), names[1])) as pid:
            joined = tuple(Namespace(t, f"/proc/{pid}/ns/{n}") for t, n in
                           (("pid", "pid"), ("mount", "mnt")))
            exec_run = launch(make_config(
                Path("/nonexistent"), ("sh", "-c", "mknod /dev/kmsg3 c 1 11 && echo mknod; "
                                                   "head -c1 /dev/kmsg3; echo x > /dev/null"),
                namespaces=joined, mounts=(), cgroup=Cgroup(names[1], root=str(cgroup2))))
        assert exec_run.returncode == 0, exec_run
        assert exec_run.stdout.split() == ["mknod"], exec_run
        assert "head: /dev/kmsg3: Operation not permitted" in exec_run.stderr, exec_run
    finally:
        for name in names:
            for _ in range(200):
                if not (cgroup2 / name).exists() or \
                        not (cgroup2 / name / "cgroup.procs").read_text().strip():
                    break
                time.sleep(0.01)
            cgroups.remove(cgroup2 / name)
