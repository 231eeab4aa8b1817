"""OCI ``linux.resources.devices`` → an eBPF cgroup-device program, attached with bpf(2).

Owns: the device rules (:class:`Rule`), runc's default allow list
(:data:`DEFAULT_ALLOWED`), their reduction to one default and a set of
exceptions (:func:`reduce_rules`, runc's devices "emulator"), the program
that enforces it (:func:`compile_program`, a ``struct bpf_insn`` array), and
loading and attaching that program to a cgroup v2 directory (:func:`attach`)
with the bpf(2) syscall through ctypes — the guest has no libbpf. The host
compiles (kata_py/translate.py) and the launcher attaches, after creating the
container's cgroup and before any process joins it. It never decides which
cgroup; it parses no JSON.

References: OCI runtime-spec config-linux.md "Allowed Device list"; the
kernel's Documentation/admin-guide/cgroup-v2.rst "Device controller" and
include/uapi/linux/bpf.h::

    struct bpf_cgroup_dev_ctx {
        __u32 access_type;  /* (access << 16) | type */
        __u32 major;
        __u32 minor;
    };
    type:   BPF_DEVCG_DEV_BLOCK = 1, BPF_DEVCG_DEV_CHAR = 2
    access: BPF_DEVCG_ACC_MKNOD = 1, BPF_DEVCG_ACC_READ = 2, BPF_DEVCG_ACC_WRITE = 4

The program returns 1 to allow and 0 to refuse (the syscall fails with
EPERM). An open(2) asks for READ and WRITE together when it wants both;
mknod(2) asks for MKNOD alone.

Semantics (runc's libcontainer/specconv and cgroups/devices are the
reference where the spec is silent):

* The list a container gets is the spec's rules in order, then runc's default
  allow list (mknod of any char or block device; null, zero, full, random,
  urandom, tty, ptmx, /dev/pts/*, /dev/net/tun), without the defaults whose
  path a ``linux.devices`` entry redefines. Like runc, the nodes
  ``linux.devices`` creates get no rule of their own (engines add one), and
  an empty list still gets the defaults: everything else is refused.
* Rules apply in order and later ones win: a type ``a`` rule resets
  everything to allow-all or deny-all (whatever its numbers and access),
  other rules add or remove exceptions to that default, merged per
  (type, major, minor). Removing access that a wider wildcard exception still
  grants (allow ``c 1:*``, then deny ``c 1:3``) is refused, as runc refuses
  it: cgroup v1 could not express it either. Absent major/minor = any.
* An *allow* exception (default deny) matches when it grants every access
  asked for; a *deny* exception (default allow) matches when it names any of
  them — as cgroup v1 decided. (runc's program asks a deny exception to cover
  every access too, so there ``deny c 1:5 w`` lets an O_RDWR open through.)
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

WILDCARD = -1
_U32_MAX = 0xFFFF_FFFF
_ACCESS_ORDER = "rwm"

# include/uapi/linux/bpf.h
BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2
BPF_DEVCG_ACC_MKNOD = 1
BPF_DEVCG_ACC_READ = 2
BPF_DEVCG_ACC_WRITE = 4
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6          # enum bpf_attach_type
BPF_F_ALLOW_MULTI = 1 << 1
_BPF_PROG_LOAD = 5
_BPF_PROG_ATTACH = 8
_DEV_TYPES = {"b": BPF_DEVCG_DEV_BLOCK, "c": BPF_DEVCG_DEV_CHAR}
_ACCESS_BITS = {"m": BPF_DEVCG_ACC_MKNOD, "r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE}
_ALL_ACCESS = BPF_DEVCG_ACC_MKNOD | BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE
_LICENSE = b"Apache-2.0"       # no GPL-only helpers are called
_PROG_NAME = b"kata_py_devices"
_LOG_SIZE = 1 << 16

# eBPF opcodes (include/uapi/linux/bpf_common.h, bpf.h). The 32-bit jumps
# (BPF_JMP32, Linux 5.1) compare majors and minors as the u32 they are.
_LDX_MEM_W = 0x61     # BPF_LDX | BPF_MEM | BPF_W:   dst = *(u32 *)(src + off)
_ALU_AND_K = 0x54     # BPF_ALU | BPF_AND | BPF_K:   dst &= imm (32-bit)
_ALU_RSH_K = 0x74     # BPF_ALU | BPF_RSH | BPF_K:   dst >>= imm
_ALU_MOV_K = 0xB4     # BPF_ALU | BPF_MOV | BPF_K:   dst = imm
_ALU_MOV_X = 0xBC     # BPF_ALU | BPF_MOV | BPF_X:   dst = src
_JMP32_JEQ_K = 0x16   # BPF_JMP32 | BPF_JEQ | BPF_K: if dst == imm: pc += off
_JMP32_JNE_K = 0x56   # BPF_JMP32 | BPF_JNE | BPF_K: if dst != imm: pc += off
_JMP32_JNE_X = 0x5E   # BPF_JMP32 | BPF_JNE | BPF_X: if dst != src: pc += off
_EXIT = 0x95          # BPF_JMP | BPF_EXIT:          return r0
_INSN = struct.Struct("<BBhi")   # struct bpf_insn: code, dst:4|src:4, off, imm
_R0, _R1, _R2, _R3, _R4, _R5 = range(6)


class DeviceRuleError(ValueError):
    """The rules cannot be enforced (the message names the rule)."""


class DeviceFilterError(OSError):
    """Loading or attaching the program failed (errno and the bpf(2) command)."""


@dataclass(frozen=True)
class Rule:
    """One ``linux.resources.devices[]`` entry; major/minor -1 = any."""

    allow: bool
    type: str = "a"          # a, b or c
    major: int = WILDCARD
    minor: int = WILDCARD
    access: str = "rwm"      # letters of "rwm"

    def __str__(self) -> str:
        """The cgroup v1 form, ``allow c 1:* rw``."""
        def number(n: int) -> str:
            return "*" if n < 0 else str(n)
        return (f"{'allow' if self.allow else 'deny'} {self.type} "
                f"{number(self.major)}:{number(self.minor)} {self.access}")


# runc's specconv.AllowedDevices (path "" = not tied to a node it creates).
DEFAULT_ALLOWED: tuple[tuple[str, Rule], ...] = (
    ("", Rule(True, "c", WILDCARD, WILDCARD, "m")),
    ("", Rule(True, "b", WILDCARD, WILDCARD, "m")),
    ("/dev/null", Rule(True, "c", 1, 3)),
    ("/dev/random", Rule(True, "c", 1, 8)),
    ("/dev/full", Rule(True, "c", 1, 7)),
    ("/dev/tty", Rule(True, "c", 5, 0)),
    ("/dev/zero", Rule(True, "c", 1, 5)),
    ("/dev/urandom", Rule(True, "c", 1, 9)),
    ("", Rule(True, "c", 136, WILDCARD)),    # /dev/pts/*
    ("", Rule(True, "c", 5, 2)),             # /dev/ptmx
    ("", Rule(True, "c", 10, 200)),          # /dev/net/tun (runc <= 1.1, >= 1.2.4)
)


@dataclass(frozen=True)
class Policy:
    """What the rules reduce to: a default, and exceptions that do the opposite."""

    default_allow: bool
    exceptions: tuple[Rule, ...] = ()

    def permits(self, dev_type: str, major: int, minor: int, access: str) -> bool:
        """What the kernel decides for a request under this policy (the
        program's specification; tests compare the two)."""
        asked = set(access)
        for ex in self.exceptions:
            if ex.type != dev_type or ex.major not in (WILDCARD, major) or \
                    ex.minor not in (WILDCARD, minor):
                continue
            granted = set(ex.access)
            matches = asked <= granted if ex.allow else bool(asked & granted)
            if matches:
                return ex.allow
        return self.default_allow


def container_rules(spec_rules: Iterable[Rule], device_paths: Iterable[str]) -> tuple[Rule, ...]:
    """runc's list: the spec's rules, then the default allow list without the
    entries whose path one of ``linux.devices`` (``device_paths``) redefines."""
    redefined = set(device_paths)
    defaults = tuple(rule for path, rule in DEFAULT_ALLOWED if not path or path not in redefined)
    return (*spec_rules, *defaults)


def _canonical(rule: Rule, where: str) -> Rule:
    if rule.type not in ("a", "b", "c"):
        raise DeviceRuleError(f"{where}: type {rule.type!r} is not a, b or c")
    if not rule.access or set(rule.access) - set(_ACCESS_ORDER):
        raise DeviceRuleError(f"{where}: access {rule.access!r} must be letters of \"rwm\"")
    for name, value in (("major", rule.major), ("minor", rule.minor)):
        if value > _U32_MAX:
            raise DeviceRuleError(f"{where}: {name} {value} is out of range")
    return Rule(rule.allow, rule.type, max(rule.major, WILDCARD), max(rule.minor, WILDCARD),
                "".join(c for c in _ACCESS_ORDER if c in rule.access))


def reduce_rules(rules: Sequence[Rule], names: Sequence[str] = ()) -> Policy:
    """Apply `rules` in order to a deny-all start (runc's emulator).
    `names[i]` says where rule i came from in errors (default "rule i")."""
    default_allow = False
    table: dict[tuple[str, int, int], str] = {}
    for index, raw in enumerate(rules):
        where = names[index] if index < len(names) else f"rule {index}"
        rule = _canonical(raw, where)
        if rule.type == "a":
            default_allow, table = rule.allow, {}
            continue
        key = (rule.type, rule.major, rule.minor)
        held = table.get(key, "")
        if rule.allow != default_allow:      # one more exception to the default
            table[key] = "".join(c for c in _ACCESS_ORDER if c in held + rule.access)
            continue
        for wider in ((rule.type, WILDCARD, rule.minor), (rule.type, rule.major, WILDCARD),
                      (rule.type, WILDCARD, WILDCARD)):
            overlap = set(table.get(wider, "")) & set(rule.access) if wider != key else set()
            if overlap:
                shown = Rule(not default_allow, *wider, table[wider])
                raise DeviceRuleError(
                    f"{where} ({rule}) cannot take access back from the earlier wider "
                    f"rule {shown}; cgroup v1 could not express it either (runc refuses "
                    "it too): reorder the rules or narrow the wildcard")
        left = "".join(c for c in held if c not in rule.access)
        if left:
            table[key] = left
        else:
            table.pop(key, None)
    exceptions = tuple(Rule(not default_allow, t, major, minor, access)
                       for (t, major, minor), access in sorted(
                           table.items(), key=lambda item: (item[0][1], item[0][2], item[0][0])))
    return Policy(default_allow, exceptions)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    if imm > 0x7FFF_FFFF:       # u32 bit pattern in the s32 field
        imm -= 1 << 32
    return _INSN.pack(code, (src << 4) | dst, off, imm)


def _access_bits(access: str) -> int:
    bits = 0
    for c in access:
        bits |= _ACCESS_BITS[c]
    return bits


def _exception_block(ex: Rule) -> list[bytes]:
    """Checks that fall through when `ex` matches, then return its verdict.
    Every failed check jumps past the block (to the next one)."""
    checks: list[tuple[int, int, int, int]] = [(_JMP32_JNE_K, _R2, 0, _DEV_TYPES[ex.type])]
    bits = _access_bits(ex.access)
    if bits != _ALL_ACCESS:
        checks.append((_ALU_MOV_X, _R1, _R3, 0))
        checks.append((_ALU_AND_K, _R1, 0, bits))
        if ex.allow:    # every access asked for is granted: (asked & bits) == asked
            checks.append((_JMP32_JNE_X, _R1, _R3, 0))
        else:           # any access asked for is refused: (asked & bits) != 0
            checks.append((_JMP32_JEQ_K, _R1, 0, 0))
    if ex.major != WILDCARD:
        checks.append((_JMP32_JNE_K, _R4, 0, ex.major))
    if ex.minor != WILDCARD:
        checks.append((_JMP32_JNE_K, _R5, 0, ex.minor))
    length = len(checks) + 2
    block = []
    for pc, (code, dst, src, imm) in enumerate(checks):
        jumps = code in (_JMP32_JNE_K, _JMP32_JNE_X, _JMP32_JEQ_K)
        block.append(_insn(code, dst, src, length - pc - 1 if jumps else 0, imm))
    block += [_insn(_ALU_MOV_K, _R0, imm=int(ex.allow)), _insn(_EXIT)]
    return block


def compile_program(policy: Policy) -> bytes:
    """The ``struct bpf_insn`` array deciding as ``policy.permits`` does."""
    insns = [
        _insn(_LDX_MEM_W, _R2, _R1, 0), _insn(_ALU_AND_K, _R2, imm=0xFFFF),   # r2 = type
        _insn(_LDX_MEM_W, _R3, _R1, 0), _insn(_ALU_RSH_K, _R3, imm=16),       # r3 = access
        _insn(_LDX_MEM_W, _R4, _R1, 4),                                       # r4 = major
        _insn(_LDX_MEM_W, _R5, _R1, 8),                                       # r5 = minor
    ]
    for ex in policy.exceptions:
        insns += _exception_block(ex)
    insns += [_insn(_ALU_MOV_K, _R0, imm=int(policy.default_allow)), _insn(_EXIT)]
    return b"".join(insns)


def compile_filter(spec_rules: Sequence[Rule], device_paths: Iterable[str]) -> bytes:
    """The program for a container: its rules plus runc's defaults (see
    container_rules); errors name ``linux.resources.devices[i]``."""
    rules = container_rules(spec_rules, device_paths)
    names = [f"linux.resources.devices[{i}]" for i in range(len(spec_rules))]
    names += [f"runc's default rule {rule}" for rule in rules[len(spec_rules):]]
    return compile_program(reduce_rules(rules, names))


# --- bpf(2) -------------------------------------------------------------------

class _ProgLoadAttr(ctypes.Structure):
    """union bpf_attr, the BPF_PROG_LOAD part up to expected_attach_type."""

    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("prog_name", ctypes.c_char * 16),
                ("prog_ifindex", ctypes.c_uint32), ("expected_attach_type", ctypes.c_uint32)]


class _ProgAttachAttr(ctypes.Structure):
    """union bpf_attr, the BPF_PROG_ATTACH part."""

    _fields_ = [("target_fd", ctypes.c_uint32), ("attach_bpf_fd", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("replace_bpf_fd", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)
# syscalls.X86_64["bpf"] (a test checks it): that table is not imported here,
# as every launcher imports this module and the guest runs Python under TCG.
_SYS_BPF = 321


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    """bpf(2); -errno on failure."""
    result = int(_libc.syscall(ctypes.c_long(_SYS_BPF), ctypes.c_int(cmd), ctypes.byref(attr),
                               ctypes.c_uint(ctypes.sizeof(attr))))
    return result if result >= 0 else -ctypes.get_errno()


def load(program: bytes) -> int:
    """BPF_PROG_LOAD as BPF_PROG_TYPE_CGROUP_DEVICE: the program's fd
    (close-on-exec). A refusal by the verifier carries the end of its log."""
    if not program or len(program) % _INSN.size:
        raise DeviceFilterError(errno.EINVAL, f"BPF_PROG_LOAD: {len(program)} bytes is not a "
                                              "program")
    insns = ctypes.create_string_buffer(program, len(program))
    license_ = ctypes.create_string_buffer(_LICENSE)
    attr = _ProgLoadAttr(prog_type=BPF_PROG_TYPE_CGROUP_DEVICE,
                         insn_cnt=len(program) // _INSN.size,
                         insns=ctypes.addressof(insns), license=ctypes.addressof(license_),
                         prog_name=_PROG_NAME, expected_attach_type=BPF_CGROUP_DEVICE)
    fd = _bpf(_BPF_PROG_LOAD, attr)
    if fd >= 0:
        return fd
    log = ctypes.create_string_buffer(_LOG_SIZE)   # again, with the verifier's log
    attr.log_level, attr.log_size, attr.log_buf = 1, _LOG_SIZE, ctypes.addressof(log)
    retry = _bpf(_BPF_PROG_LOAD, attr)
    if retry >= 0:
        return retry
    lines = log.value.decode(errors="replace").strip().splitlines()
    detail = f" (verifier: {' | '.join(lines[-3:])})" if lines else ""
    raise DeviceFilterError(-fd, f"BPF_PROG_LOAD: {os.strerror(-fd)}{detail}")


def attach(program: bytes, cgroup: Path | str) -> None:
    """Load `program` and attach it to the cgroup v2 directory `cgroup`
    (BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI: it adds to what ancestors enforce,
    never replaces it). The attachment lives as long as the cgroup."""
    prog_fd = load(program)
    try:
        dir_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            attr = _ProgAttachAttr(target_fd=dir_fd, attach_bpf_fd=prog_fd,
                                   attach_type=BPF_CGROUP_DEVICE, attach_flags=BPF_F_ALLOW_MULTI)
            result = _bpf(_BPF_PROG_ATTACH, attr)
            if result < 0:
                raise DeviceFilterError(-result, f"BPF_PROG_ATTACH: {os.strerror(-result)}")
        finally:
            os.close(dir_fd)
    finally:
        os.close(prog_fd)
