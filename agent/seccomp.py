"""OCI ``linux.seccomp`` -> classic BPF, installed with seccomp(2), no libseccomp.

Owns: the typed profile (:class:`SeccompProfile`), its compilation into a
``struct sock_filter`` array (:func:`compile_filter`,
:func:`compile_description`), which the host does once per container
(kata_py/translate.py), and installing the program on the calling thread
(:func:`install`, :func:`set_no_new_privs`), which the single-threaded
container launcher does right before ``execve``. It must not parse protobuf
or JSON: its callers hand it dataclasses or their dict form.

References: OCI runtime-spec config-linux.md "Seccomp"; the kernel's
Documentation/userspace-api/seccomp_filter.rst and include/uapi/linux/
{seccomp,filter,audit}.h (``struct seccomp_data``: nr @0, arch @4,
instruction_pointer @8, args[6] @16, little-endian u64 on x86).

Semantics (libseccomp/runc are the reference where the spec is silent):

* Architectures: ``SCMP_ARCH_X86_64``, ``SCMP_ARCH_X86`` (i386) and
  ``SCMP_ARCH_X32``; an empty list means the native x86_64 only. Other
  ``SCMP_ARCH_*`` names can never be reported by an x86_64 kernel and are
  skipped with a debug log. A syscall from an ABI not in the list gets the
  *bad-arch* action, ``SECCOMP_RET_KILL_THREAD``, as libseccomp's default.
* x32 is what libseccomp does: it arrives as ``AUDIT_ARCH_X86_64`` with
  ``nr | 0x40000000``. On x86_64, a number at or above that bit goes to the
  x32 table when x32 is listed, else to the bad-arch action; ``nr == -1``
  (a tracer skipping the call) gets the default action.
* Arguments: x86_64 compares all 64 bits (high half, then low half, unsigned);
  i386 and x32 compare the low 32 bits of argument and operands, as libseccomp
  does for 32-bit ABIs. ``SCMP_CMP_MASKED_EQ`` is ``(arg & value) ==
  (value_two & value)``: ``value`` is the mask (libseccomp's datum_a).
  Several args in one rule are ANDed.
* Order: for each syscall, the rules with arguments are tried first, in
  profile order (first match wins), then the first rule without arguments,
  then the default action. Specific-before-general is what makes Docker's
  profile work: ``socket`` is allowed outright and denied for ``AF_VSOCK``.
* A name one listed ABI lacks is skipped for it with a debug log, like runc.
  A name no x86 ABI has and libseccomp does not know either (a typo, or a
  syscall newer than libseccomp) is skipped with a warning naming its JSON
  path, as crun does (runc logs it at debug): the rule then does nothing.
* ``SCMP_ACT_ERRNO`` and ``SCMP_ACT_TRACE`` return ``errno_ret`` (EPERM when
  unset); other actions ignore it. ``SCMP_ACT_KILL`` is ``KILL_THREAD``.
  ``SCMP_ACT_NOTIFY`` is not supported (no listener fd is handed out).

Layout: per ABI, one ``jeq nr`` per plainly-handled syscall jumping to a
shared ``ret`` that follows each run of at most 250 of them, then one block
per syscall with argument rules; jumps farther than a conditional jump's 255
reach go through ``BPF_JA`` (32-bit offset). Docker's default profile needs
about 1,100 instructions for three ABIs; more than BPF_MAXINSNS (4096) is an
error.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from kata_py.agent import syscalls

log = logging.getLogger(__name__)

BPF_MAXINSNS = 4096

# linux/filter.h (classic BPF opcodes used here)
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_ALU_AND_K = 0x54  # BPF_ALU | BPF_AND | BPF_K
_JA = 0x05  # BPF_JMP | BPF_JA
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGT = 0x25  # BPF_JMP | BPF_JGT | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
_SOCK_FILTER = struct.Struct("=HBBI")

# linux/seccomp.h
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_LOG = 0x7FFC0000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_DATA = 0x0000FFFF
FILTER_FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": 1 << 0,
    "SECCOMP_FILTER_FLAG_LOG": 1 << 1,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 1 << 2,
}

# linux/audit.h: EM_X86_64 | 64BIT | LE, EM_386 | LE
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_SYSCALL_BIT = 0x40000000

# struct seccomp_data offsets
_NR, _ARCH, _ARGS = 0, 4, 16

_SYS_SECCOMP_X86_64 = 317
_PR_SET_NO_NEW_PRIVS = 38

_ACTIONS = {
    "SCMP_ACT_KILL": SECCOMP_RET_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": SECCOMP_RET_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": SECCOMP_RET_KILL_PROCESS,
    "SCMP_ACT_TRAP": SECCOMP_RET_TRAP,
    "SCMP_ACT_ERRNO": SECCOMP_RET_ERRNO,
    "SCMP_ACT_TRACE": SECCOMP_RET_TRACE,
    "SCMP_ACT_LOG": SECCOMP_RET_LOG,
    "SCMP_ACT_ALLOW": SECCOMP_RET_ALLOW,
}
_OPS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
        "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ")
_BAD_ARCH_RET = SECCOMP_RET_KILL_THREAD
# Names libseccomp (2.5.4) knows that no table in syscalls.py has: other
# architectures' syscalls and socketcall(2)'s multiplexed calls, which engines'
# default profiles list for every architecture (podman's has pciconfig_*,
# swapcontext, recv, send, syscall, timerfd), and x86_64 syscalls newer than
# syscalls.py's 6.1 headers. Skipped without a warning.
KNOWN_ELSEWHERE = frozenset("""
    arm_fadvise64_64 arm_sync_file_range breakpoint cachectl cacheflush get_tls multiplexer
    pciconfig_iobase pciconfig_read pciconfig_write recv riscv_flush_icache rtas
    s390_guarded_storage s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr s390_sthyi
    send set_tls spu_create spu_run subpage_prot swapcontext switch_endian sync_file_range2
    syscall sysmips timerfd usr26 usr32
    cachestat fchmodat2 map_shadow_stack futex_wake futex_wait futex_requeue statmount listmount
    lsm_get_self_attr lsm_set_self_attr lsm_list_modules mseal setxattrat getxattrat
    listxattrat removexattrat open_tree_attr file_getattr file_setattr uretprobe
""".split())
_UNKNOWN_SHOWN = 8          # names listed in the warning; the rest are counted
_CHUNK = 250  # jeq's sharing one ret; keeps every conditional jump under 256


class SeccompError(ValueError):
    """The profile cannot be compiled (names the offending field and value)."""


@dataclass(frozen=True)
class ArgMatch:
    """One ``linux.seccomp.syscalls[].args[]`` entry."""

    index: int
    value: int
    value_two: int = 0
    op: str = "SCMP_CMP_EQ"


@dataclass(frozen=True)
class SyscallRule:
    """One ``linux.seccomp.syscalls[]`` entry."""

    names: tuple[str, ...]
    action: str
    errno_ret: int | None = None
    args: tuple[ArgMatch, ...] = ()


@dataclass(frozen=True)
class SeccompProfile:
    """``linux.seccomp``; ``default_errno_ret`` is ``defaultErrnoRet``."""

    default_action: str
    default_errno_ret: int | None = None
    architectures: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    syscalls: tuple[SyscallRule, ...] = ()


@dataclass(frozen=True)
class _Abi:
    audit_arch: int
    table: Mapping[str, int]
    wide: bool  # compare 64-bit arguments (else the low 32 bits only)


_ABIS = {
    "SCMP_ARCH_X86_64": _Abi(AUDIT_ARCH_X86_64, syscalls.X86_64, True),
    "SCMP_ARCH_X86": _Abi(AUDIT_ARCH_I386, syscalls.I386, False),
    "SCMP_ARCH_X32": _Abi(AUDIT_ARCH_X86_64, syscalls.X32, False),
}


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _Label:
    """A jump target; placed once in the instruction stream."""


Target: TypeAlias = int | _Label


@dataclass
class _Asm:
    """Instructions with symbolic jump targets, resolved by :meth:`assemble`."""

    items: list[tuple[int, Target, Target, Target] | _Label] = field(default_factory=list)

    def emit(self, code: int, k: Target = 0, jt: Target = 0, jf: Target = 0) -> None:
        self.items.append((code, jt, jf, k))

    def place(self, label: _Label) -> None:
        self.items.append(label)

    def ret(self, value: int) -> None:
        self.emit(_RET_K, value)

    def assemble(self) -> list[tuple[int, int, int, int]]:
        where: dict[_Label, int] = {}
        count = 0
        for item in self.items:
            if isinstance(item, _Label):
                where[item] = count
            else:
                count += 1
        out: list[tuple[int, int, int, int]] = []
        for item in self.items:
            if isinstance(item, _Label):
                continue
            pc = len(out)
            code, jt, jf, k = item
            if code == _JA:
                out.append((code, 0, 0, _offset(where, pc, k, 0xFFFFFFFF)))
            elif isinstance(k, int):
                out.append((code, _offset(where, pc, jt, 255), _offset(where, pc, jf, 255), k))
            else:
                raise RuntimeError(f"internal error: label as the operand at {pc}")
        return out


def _offset(where: dict[_Label, int], pc: int, target: Target, limit: int) -> int:
    off = target if isinstance(target, int) else where[target] - pc - 1
    if not 0 <= off <= limit:
        raise RuntimeError(f"internal error: jump offset {off} at instruction {pc}")
    return off


def compile_filter(profile: SeccompProfile) -> bytes:
    """The packed ``struct sock_filter`` array for ``profile``."""
    insns = _compile(profile).assemble()
    if len(insns) > BPF_MAXINSNS:
        raise SeccompError(f"linux.seccomp: the filter needs {len(insns)} BPF instructions, "
                           f"more than the kernel's {BPF_MAXINSNS}; merge or drop rules")
    return b"".join(_SOCK_FILTER.pack(*insn) for insn in insns)


def filter_flags(profile: SeccompProfile) -> int:
    """``linux.seccomp.flags`` as the seccomp(2) ``flags`` word."""
    bits = 0
    for name in profile.flags:
        if name not in FILTER_FLAGS:
            raise SeccompError(f"linux.seccomp.flags: {name!r} is not supported "
                               f"(supported: {', '.join(FILTER_FLAGS)})")
        bits |= FILTER_FLAGS[name]
    return bits


def profile_from_dict(raw: Mapping[str, Any]) -> SeccompProfile:
    """A launch description's seccomp dict (SeccompProfile's fields, JSON
    values) → a SeccompProfile; SeccompError when it does not fit."""
    try:
        rules = tuple(
            SyscallRule(**{**rule, "names": tuple(rule["names"]),
                           "args": tuple(ArgMatch(**a) for a in rule.get("args", ()))})
            for rule in raw.get("syscalls", ()))
        return SeccompProfile(**{**raw, "syscalls": rules,
                                 "architectures": tuple(raw.get("architectures", ())),
                                 "flags": tuple(raw.get("flags", ()))})
    except (TypeError, KeyError, AttributeError) as exc:
        raise SeccompError(f"linux.seccomp: profile does not match SeccompProfile: {exc}") \
            from exc


def compile_description(raw: Mapping[str, Any]) -> tuple[bytes, int]:
    """(program, flags) for a seccomp dict: what the host puts in the launch
    description, so that no guest compiles it (Python runs tens of times
    slower there under TCG, and every exec would compile it again)."""
    profile = profile_from_dict(raw)
    return compile_filter(profile), filter_flags(profile)


def set_no_new_privs() -> None:
    """prctl(PR_SET_NO_NEW_PRIVS, 1): lets an unprivileged thread install a filter."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0),
                  ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {errno.errorcode.get(err, err)}")


def install(program: bytes, flags: int = 0) -> None:
    """seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog) on the calling thread.

    The kernel requires no_new_privs (:func:`set_no_new_privs`) or
    CAP_SYS_ADMIN in the thread's user namespace, else EACCES. Filters stack
    and are inherited across fork and execve; only TSYNC reaches other threads.
    """
    count, rest = divmod(len(program), _SOCK_FILTER.size)
    if rest or not 0 < count <= BPF_MAXINSNS:
        raise SeccompError(f"seccomp program of {len(program)} bytes is not 1..{BPF_MAXINSNS} "
                           "sock_filter instructions")
    buffer = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(count, ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.syscall(ctypes.c_long(_SYS_SECCOMP_X86_64),
                          ctypes.c_ulong(SECCOMP_SET_MODE_FILTER), ctypes.c_ulong(flags),
                          ctypes.byref(prog))
    if result > 0:  # TSYNC: the id of a thread that could not be synchronized
        raise OSError(errno.ESRCH, f"seccomp: TSYNC failed on thread {result}")
    if result != 0:
        err = ctypes.get_errno()
        hint = " (set no_new_privs or hold CAP_SYS_ADMIN)" if err == errno.EACCES else ""
        raise OSError(err, f"seccomp(SECCOMP_SET_MODE_FILTER, {flags:#x}): "
                           f"{errno.errorcode.get(err, err)}{hint}")


def _action_ret(action: str, errno_ret: int | None, where: str) -> int:
    if action == "SCMP_ACT_NOTIFY":
        raise SeccompError(f"{where}: SCMP_ACT_NOTIFY is not supported")
    if action not in _ACTIONS:
        raise SeccompError(f"{where}: unknown action {action!r}")
    ret = _ACTIONS[action]
    if ret in (SECCOMP_RET_ERRNO, SECCOMP_RET_TRACE):
        data = errno.EPERM if errno_ret is None else errno_ret
        if not 0 <= data <= SECCOMP_RET_DATA:
            raise SeccompError(f"{where}: errnoRet {data} is out of range 0..65535")
        ret |= data
    return ret


def _abis(architectures: tuple[str, ...]) -> dict[str, _Abi]:
    chosen: dict[str, _Abi] = {}
    for name in architectures or ("SCMP_ARCH_X86_64",):
        if name in _ABIS:
            chosen[name] = _ABIS[name]
        elif name.startswith("SCMP_ARCH_"):
            log.debug("seccomp: architecture %s cannot occur on x86_64; skipped", name)
        else:
            raise SeccompError(f"linux.seccomp.architectures: unknown architecture {name!r}")
    return chosen


@dataclass
class _Syscall:
    """What one syscall number does: argument rules first, then ``fallback``."""

    conditional: list[tuple[int, tuple[ArgMatch, ...]]] = field(default_factory=list)
    fallback: int | None = None


def _plan(profile: SeccompProfile, rets: list[int], table: Mapping[str, int],
          arch: str) -> dict[int, _Syscall]:
    plan: dict[int, _Syscall] = {}
    for rule, ret in zip(profile.syscalls, rets, strict=True):
        for name in rule.names:
            nr = table.get(name)
            if nr is None:
                log.debug("seccomp: unknown syscall %r for %s ignored", name, arch)
                continue
            entry = plan.setdefault(nr, _Syscall())
            if rule.args:
                entry.conditional.append((ret, rule.args))
            elif entry.fallback is None:
                entry.fallback = ret
    return plan


def _warn_unknown(profile: SeccompProfile) -> None:
    """One warning for the names that are no syscall anywhere (see KNOWN_ELSEWHERE)."""
    unknown = [f"linux.seccomp.syscalls[{i}].names[{j}] {name!r}"
               for i, rule in enumerate(profile.syscalls) for j, name in enumerate(rule.names)
               if name not in KNOWN_ELSEWHERE and not any(
                   name in abi.table for abi in _ABIS.values())]
    if unknown:
        more = len(unknown) - _UNKNOWN_SHOWN
        log.warning("unknown syscall%s ignored: %s%s", "s" if len(unknown) > 1 else "",
                    ", ".join(unknown[:_UNKNOWN_SHOWN]), f" and {more} more" if more > 0 else "")


def _check_args(profile: SeccompProfile) -> None:
    for i, rule in enumerate(profile.syscalls):
        for j, arg in enumerate(rule.args):
            where = f"linux.seccomp.syscalls[{i}].args[{j}]"
            if not 0 <= arg.index < 6:
                raise SeccompError(f"{where}.index: {arg.index} is not 0..5")
            if arg.op not in _OPS:
                raise SeccompError(f"{where}.op: unknown operator {arg.op!r}")
            for key, value in (("value", arg.value), ("valueTwo", arg.value_two)):
                if not 0 <= value < 1 << 64:
                    raise SeccompError(f"{where}.{key}: {value} is not a 64-bit unsigned value")


def _compile(profile: SeccompProfile) -> _Asm:
    default = _action_ret(profile.default_action, profile.default_errno_ret,
                          "linux.seccomp.defaultAction")
    rets = [_action_ret(rule.action, rule.errno_ret, f"linux.seccomp.syscalls[{i}].action")
            for i, rule in enumerate(profile.syscalls)]
    _check_args(profile)
    abis = _abis(profile.architectures)
    _warn_unknown(profile)
    plans = {name: _plan(profile, rets, abi.table, name) for name, abi in abis.items()}

    asm = _Asm()
    asm.emit(_LD_W_ABS, _ARCH)
    native, x32 = "SCMP_ARCH_X86_64" in abis, "SCMP_ARCH_X32" in abis
    if native or x32:
        other = _Label()
        asm.emit(_JEQ, AUDIT_ARCH_X86_64, jt=1, jf=0)
        asm.emit(_JA, other)
        high = _Label()
        asm.emit(_LD_W_ABS, _NR)
        asm.emit(_JGE, X32_SYSCALL_BIT, jt=0, jf=1)
        asm.emit(_JA, high)
        if native:
            _emit_table(asm, plans["SCMP_ARCH_X86_64"], True, default)
        else:
            asm.ret(_BAD_ARCH_RET)
        asm.place(high)
        asm.emit(_JEQ, 0xFFFFFFFF, jt=0, jf=1)
        asm.ret(default)
        if x32:
            _emit_table(asm, plans["SCMP_ARCH_X32"], False, default)
        else:
            asm.ret(_BAD_ARCH_RET)
        asm.place(other)
    if "SCMP_ARCH_X86" in abis:
        other = _Label()
        asm.emit(_JEQ, AUDIT_ARCH_I386, jt=1, jf=0)
        asm.emit(_JA, other)
        asm.emit(_LD_W_ABS, _NR)
        _emit_table(asm, plans["SCMP_ARCH_X86"], False, default)
        asm.place(other)
    asm.ret(_BAD_ARCH_RET)
    return asm


def _emit_table(asm: _Asm, plan: dict[int, _Syscall], wide: bool, default: int) -> None:
    """Dispatch on the syscall number in A; every path ends in a ``ret``."""
    plain: dict[int, list[int]] = {}
    for nr, entry in sorted(plan.items()):
        if not entry.conditional and entry.fallback is not None and entry.fallback != default:
            plain.setdefault(entry.fallback, []).append(nr)
    for ret, numbers in plain.items():
        for start in range(0, len(numbers), _CHUNK):
            target, after = _Label(), _Label()
            for nr in numbers[start:start + _CHUNK]:
                asm.emit(_JEQ, nr, jt=target)
            asm.emit(_JA, after)
            asm.place(target)
            asm.ret(ret)
            asm.place(after)
    for nr, entry in sorted(plan.items()):
        if not entry.conditional:
            continue
        skip = _Label()
        asm.emit(_JEQ, nr, jt=1, jf=0)
        asm.emit(_JA, skip)
        for ret, args in entry.conditional:
            fail = _Label()
            for arg in args:
                _emit_compare(asm, arg, wide, fail)
            asm.ret(ret)
            asm.place(fail)
        asm.ret(default if entry.fallback is None else entry.fallback)
        asm.place(skip)
    asm.ret(default)


def _emit_compare(asm: _Asm, arg: ArgMatch, wide: bool, fail: _Label) -> None:
    """Fall through when ``args[index] <op> value`` holds, else jump to ``fail``."""
    lo, hi = _ARGS + 8 * arg.index, _ARGS + 8 * arg.index + 4
    ok = _Label()
    if arg.op == "SCMP_CMP_MASKED_EQ":
        datum = arg.value_two & arg.value  # libseccomp masks the datum too
        halves = [(lo, arg.value & 0xFFFFFFFF, datum & 0xFFFFFFFF)]
        if wide:
            halves.insert(0, (hi, arg.value >> 32, datum >> 32))
        for offset, mask, datum in halves:
            asm.emit(_LD_W_ABS, offset)
            asm.emit(_ALU_AND_K, mask)
            asm.emit(_JEQ, datum, jt=0, jf=fail)
        return
    v_lo, v_hi = arg.value & 0xFFFFFFFF, arg.value >> 32
    if wide:
        asm.emit(_LD_W_ABS, hi)
        if arg.op == "SCMP_CMP_EQ":
            asm.emit(_JEQ, v_hi, jt=0, jf=fail)
        elif arg.op == "SCMP_CMP_NE":
            asm.emit(_JEQ, v_hi, jt=0, jf=ok)
        elif arg.op in ("SCMP_CMP_GT", "SCMP_CMP_GE"):
            asm.emit(_JGT, v_hi, jt=ok, jf=0)
            asm.emit(_JEQ, v_hi, jt=0, jf=fail)
        else:  # LT, LE
            asm.emit(_JGT, v_hi, jt=fail, jf=0)
            asm.emit(_JEQ, v_hi, jt=0, jf=ok)
    asm.emit(_LD_W_ABS, lo)
    jumps: dict[str, tuple[int, Target, Target]] = {
        "SCMP_CMP_EQ": (_JEQ, 0, fail),
        "SCMP_CMP_NE": (_JEQ, fail, 0),
        "SCMP_CMP_GT": (_JGT, 0, fail),
        "SCMP_CMP_GE": (_JGE, 0, fail),
        "SCMP_CMP_LT": (_JGE, fail, 0),
        "SCMP_CMP_LE": (_JGT, fail, 0),
    }
    code, jt, jf = jumps[arg.op]
    asm.emit(code, v_lo, jt=jt, jf=jf)
    asm.place(ok)
