"""kata_py.agent.seccomp: semantics on a small BPF interpreter, then the real kernel.

The interpreter runs the compiled program against a ``struct seccomp_data`` the
way the kernel does (seccomp_filter.rst); the kernel tests fork a child that
installs the filter and reports through its exit status.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from kata_py.agent import seccomp, syscalls
from kata_py.agent.seccomp import (
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    SECCOMP_RET_KILL_THREAD,
    SECCOMP_RET_LOG,
    SECCOMP_RET_TRACE,
    SECCOMP_RET_TRAP,
    ArgMatch,
    SeccompError,
    SeccompProfile,
    SyscallRule,
)

REPO = Path(__file__).resolve().parents[2]
X64 = syscalls.X86_64
EPERM = SECCOMP_RET_ERRNO | errno.EPERM


def run_bpf(program: bytes, nr: int, arch: int = AUDIT_ARCH_X86_64,
            args: tuple[int, ...] = ()) -> int:
    """Interpret a classic-BPF seccomp program (the subset the compiler emits)."""
    full = (tuple(args) + (0,) * 6)[:6]
    data = struct.pack("<IIQ6Q", nr & 0xFFFFFFFF, arch, 0, *full)
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:
            assert k % 4 == 0 and k < len(data)
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x54:
            acc &= k
        elif code == 0x05:
            pc += k
        elif code in (0x15, 0x25, 0x35):
            cond = {0x15: acc == k, 0x25: acc > k, 0x35: acc >= k}[code]
            pc += jt if cond else jf
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def profile(*rules: SyscallRule, default: str = "SCMP_ACT_ERRNO",
            arches: tuple[str, ...] = ("SCMP_ARCH_X86_64",), errno_ret: int | None = None,
            flags: tuple[str, ...] = ()) -> SeccompProfile:
    return SeccompProfile(default, errno_ret, arches, flags, tuple(rules))


def allow(*names: str) -> SyscallRule:
    return SyscallRule(names, "SCMP_ACT_ALLOW")


def test_listed_syscall_is_allowed_and_the_rest_gets_default_eperm() -> None:
    prog = seccomp.compile_filter(profile(allow("getpid", "read")))
    assert run_bpf(prog, X64["getpid"]) == SECCOMP_RET_ALLOW
    assert run_bpf(prog, X64["read"]) == SECCOMP_RET_ALLOW
    assert run_bpf(prog, X64["mkdir"]) == EPERM


def test_default_errno_ret_sets_the_default_errno() -> None:
    prog = seccomp.compile_filter(profile(allow("getpid"), errno_ret=errno.ENOSYS))
    assert run_bpf(prog, X64["mkdir"]) == SECCOMP_RET_ERRNO | errno.ENOSYS


@pytest.mark.parametrize(("action", "errno_ret", "ret"), [
    ("SCMP_ACT_ALLOW", None, SECCOMP_RET_ALLOW),
    ("SCMP_ACT_ERRNO", None, EPERM),
    ("SCMP_ACT_ERRNO", 38, SECCOMP_RET_ERRNO | 38),
    ("SCMP_ACT_KILL", None, SECCOMP_RET_KILL_THREAD),
    ("SCMP_ACT_KILL_THREAD", None, SECCOMP_RET_KILL_THREAD),
    ("SCMP_ACT_KILL_PROCESS", None, SECCOMP_RET_KILL_PROCESS),
    ("SCMP_ACT_TRAP", None, SECCOMP_RET_TRAP),
    ("SCMP_ACT_TRACE", None, SECCOMP_RET_TRACE | errno.EPERM),
    ("SCMP_ACT_TRACE", 7, SECCOMP_RET_TRACE | 7),
    ("SCMP_ACT_LOG", None, SECCOMP_RET_LOG),
    ("SCMP_ACT_ALLOW", 5, SECCOMP_RET_ALLOW),  # errnoRet ignored for actions without data
])
def test_each_action_compiles_to_its_return_value(action: str, errno_ret: int | None,
                                                  ret: int) -> None:
    rule = SyscallRule(("mkdir",), action, errno_ret)
    prog = seccomp.compile_filter(profile(rule, default="SCMP_ACT_LOG"))
    assert run_bpf(prog, X64["mkdir"]) == ret
    assert run_bpf(prog, X64["getpid"]) == SECCOMP_RET_LOG


def test_notify_and_unknown_actions_are_rejected() -> None:
    with pytest.raises(ValueError, match="SCMP_ACT_NOTIFY is not supported"):
        seccomp.compile_filter(profile(SyscallRule(("mkdir",), "SCMP_ACT_NOTIFY")))
    with pytest.raises(SeccompError, match=r"syscalls\[0\].action: unknown action 'X'"):
        seccomp.compile_filter(profile(SyscallRule(("mkdir",), "X")))
    with pytest.raises(SeccompError, match="defaultAction: SCMP_ACT_NOTIFY"):
        seccomp.compile_filter(profile(default="SCMP_ACT_NOTIFY"))


def test_unlisted_arch_gets_kill_thread_and_listed_i386_uses_its_own_numbers() -> None:
    prog = seccomp.compile_filter(profile(allow("mkdir")))
    assert run_bpf(prog, syscalls.I386["mkdir"], AUDIT_ARCH_I386) == SECCOMP_RET_KILL_THREAD
    assert run_bpf(prog, 0, 0xC00000B7) == SECCOMP_RET_KILL_THREAD  # aarch64
    both = seccomp.compile_filter(profile(allow("mkdir"),
                                          arches=("SCMP_ARCH_X86_64", "SCMP_ARCH_X86")))
    assert run_bpf(both, syscalls.I386["mkdir"], AUDIT_ARCH_I386) == SECCOMP_RET_ALLOW
    assert run_bpf(both, X64["mkdir"], AUDIT_ARCH_I386) == EPERM  # 83 is i386 fchdir... denied
    assert run_bpf(both, X64["mkdir"]) == SECCOMP_RET_ALLOW


def test_empty_architectures_means_native_only() -> None:
    prog = seccomp.compile_filter(profile(allow("mkdir"), arches=()))
    assert run_bpf(prog, X64["mkdir"]) == SECCOMP_RET_ALLOW
    assert run_bpf(prog, syscalls.I386["mkdir"], AUDIT_ARCH_I386) == SECCOMP_RET_KILL_THREAD


def test_x32_numbers_need_x32_listed_else_bad_arch() -> None:
    x32_mkdir = syscalls.X32["mkdir"]
    assert x32_mkdir == 0x40000000 | X64["mkdir"]
    prog = seccomp.compile_filter(profile(allow("mkdir")))
    assert run_bpf(prog, x32_mkdir) == SECCOMP_RET_KILL_THREAD
    assert run_bpf(prog, -1) == EPERM  # a tracer's skipped syscall gets the default
    with_x32 = seccomp.compile_filter(profile(allow("mkdir"),
                                              arches=("SCMP_ARCH_X86_64", "SCMP_ARCH_X32")))
    assert run_bpf(with_x32, x32_mkdir) == SECCOMP_RET_ALLOW
    assert run_bpf(with_x32, syscalls.X32["rmdir"]) == EPERM
    only_x32 = seccomp.compile_filter(profile(allow("mkdir"), arches=("SCMP_ARCH_X32",)))
    assert run_bpf(only_x32, X64["mkdir"]) == SECCOMP_RET_KILL_THREAD
    assert run_bpf(only_x32, x32_mkdir) == SECCOMP_RET_ALLOW


def test_foreign_arch_is_skipped_and_garbage_arch_rejected() -> None:
    prog = seccomp.compile_filter(profile(allow("mkdir"),
                                          arches=("SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64")))
    assert run_bpf(prog, X64["mkdir"]) == SECCOMP_RET_ALLOW
    with pytest.raises(SeccompError, match="unknown architecture 'amd64'"):
        seccomp.compile_filter(profile(arches=("amd64",)))


def test_unknown_syscall_names_are_skipped_with_a_debug_log(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kata_py.agent.seccomp")
    prog = seccomp.compile_filter(profile(allow("no_such_call", "getpid")))
    assert run_bpf(prog, X64["getpid"]) == SECCOMP_RET_ALLOW
    assert "unknown syscall 'no_such_call' for SCMP_ARCH_X86_64 ignored" in caplog.text


def test_a_name_no_architecture_has_is_skipped_with_one_warning_naming_its_path(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kata_py.agent.seccomp")
    prog = seccomp.compile_filter(profile(allow("getpid"), allow("read", "opne"),
                                          arches=("SCMP_ARCH_X86_64", "SCMP_ARCH_X86")))
    assert run_bpf(prog, X64["read"]) == SECCOMP_RET_ALLOW
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["unknown syscall ignored: linux.seccomp.syscalls[1].names[1] 'opne'"]


def test_the_warning_lists_eight_unknown_names_and_counts_the_rest(
        caplog: pytest.LogCaptureFixture) -> None:
    seccomp.compile_filter(profile(allow(*(f"bogus{i}" for i in range(10)))))
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == ("unknown syscalls ignored: " + ", ".join(
        f"linux.seccomp.syscalls[0].names[{i}] 'bogus{i}'" for i in range(8)) + " and 2 more")


def test_names_other_architectures_have_give_no_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    """podman's default profile lists these for every architecture; libseccomp
    knows them, so crun does not warn either."""
    seccomp.compile_filter(profile(allow(
        "pciconfig_iobase", "pciconfig_read", "pciconfig_write", "swapcontext", "recv", "send",
        "syscall", "timerfd", "socketcall", "arm_fadvise64_64", "s390_runtime_instr",
        "cachestat", "mseal")))
    seccomp.compile_filter(docker_like_profile())
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


U64 = [0, 1, 2, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, (1 << 32) + 5, 0xFFFFFFFF00000000,
       (1 << 64) - 1, 0x123456789]
OPS: dict[str, Callable[[int, int, int], bool]] = {
    "SCMP_CMP_EQ": lambda a, v, _: a == v,
    "SCMP_CMP_NE": lambda a, v, _: a != v,
    "SCMP_CMP_LT": lambda a, v, _: a < v,
    "SCMP_CMP_LE": lambda a, v, _: a <= v,
    "SCMP_CMP_GT": lambda a, v, _: a > v,
    "SCMP_CMP_GE": lambda a, v, _: a >= v,
    "SCMP_CMP_MASKED_EQ": lambda a, mask, datum: a & mask == datum & mask,
}


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("index", [0, 5])
def test_64_bit_compares_match_python_semantics_exhaustively(op: str, index: int) -> None:
    for value in U64:
        for value_two in (0, 1, 0xFFFFFFFF00000000):
            rule = SyscallRule(("ioctl",), "SCMP_ACT_ALLOW",
                               args=(ArgMatch(index, value, value_two, op),))
            prog = seccomp.compile_filter(profile(rule))
            for arg in U64:
                args = tuple(arg if i == index else 0xDEAD for i in range(6))
                want = SECCOMP_RET_ALLOW if OPS[op](arg, value, value_two) else EPERM
                assert run_bpf(prog, X64["ioctl"], args=args) == want, (op, value, arg)


@pytest.mark.parametrize("op", OPS)
def test_i386_compares_only_the_low_32_bits(op: str) -> None:
    for value in U64:
        rule = SyscallRule(("ioctl",), "SCMP_ACT_ALLOW", args=(ArgMatch(1, value, 1, op),))
        prog = seccomp.compile_filter(profile(rule, arches=("SCMP_ARCH_X86",)))
        for arg in U64:
            lo = 0xFFFFFFFF
            want = OPS[op](arg & lo, value & lo, 1)
            got = run_bpf(prog, syscalls.I386["ioctl"], AUDIT_ARCH_I386, args=(0, arg))
            assert got == (SECCOMP_RET_ALLOW if want else EPERM), (op, value, arg)


def test_masked_eq_takes_the_mask_from_value_like_docker_clone() -> None:
    clone_newns_etc = 0x7E020000
    rule = SyscallRule(("clone",), "SCMP_ACT_ALLOW",
                       args=(ArgMatch(0, clone_newns_etc, 0, "SCMP_CMP_MASKED_EQ"),))
    prog = seccomp.compile_filter(profile(rule))
    assert run_bpf(prog, X64["clone"], args=(0x01200011,)) == SECCOMP_RET_ALLOW  # fork()
    assert run_bpf(prog, X64["clone"], args=(0x00020000,)) == EPERM  # CLONE_NEWNS


def test_several_args_in_one_rule_are_anded() -> None:
    rule = SyscallRule(("socket",), "SCMP_ACT_ALLOW",
                       args=(ArgMatch(0, 2), ArgMatch(1, 1)))
    prog = seccomp.compile_filter(profile(rule))
    assert run_bpf(prog, X64["socket"], args=(2, 1)) == SECCOMP_RET_ALLOW
    assert run_bpf(prog, X64["socket"], args=(2, 2)) == EPERM
    assert run_bpf(prog, X64["socket"], args=(10, 1)) == EPERM


def test_arg_rules_win_over_a_plain_rule_and_among_themselves_the_first_wins() -> None:
    prog = seccomp.compile_filter(profile(
        allow("socket"),
        SyscallRule(("socket",), "SCMP_ACT_ERRNO", 97, (ArgMatch(0, 40),)),  # AF_VSOCK
        SyscallRule(("socket",), "SCMP_ACT_ERRNO", 13, (ArgMatch(0, 40),)),  # shadowed
        SyscallRule(("socket",), "SCMP_ACT_KILL", None, (ArgMatch(0, 30, 0, "SCMP_CMP_GE"),)),
        SyscallRule(("socket",), "SCMP_ACT_LOG"),  # second plain rule: shadowed
    ))
    assert run_bpf(prog, X64["socket"], args=(2,)) == SECCOMP_RET_ALLOW
    assert run_bpf(prog, X64["socket"], args=(40,)) == SECCOMP_RET_ERRNO | 97
    assert run_bpf(prog, X64["socket"], args=(31,)) == SECCOMP_RET_KILL_THREAD


def test_conditional_rule_without_plain_rule_falls_back_to_default() -> None:
    rule = SyscallRule(("personality",), "SCMP_ACT_ALLOW", args=(ArgMatch(0, 0xFFFFFFFF),))
    prog = seccomp.compile_filter(profile(rule, allow("getpid")))
    assert run_bpf(prog, X64["personality"], args=(0xFFFFFFFF,)) == SECCOMP_RET_ALLOW
    assert run_bpf(prog, X64["personality"], args=(8,)) == EPERM
    assert run_bpf(prog, X64["getpid"]) == SECCOMP_RET_ALLOW


@pytest.mark.parametrize(("arg", "message"), [
    (ArgMatch(6, 0), r"args\[0\].index: 6 is not 0..5"),
    (ArgMatch(0, 0, 0, "SCMP_CMP_FOO"), "unknown operator 'SCMP_CMP_FOO'"),
    (ArgMatch(0, 1 << 64), "value: 18446744073709551616 is not a 64-bit"),
    (ArgMatch(0, 0, -1), "valueTwo: -1 is not"),
])
def test_bad_args_are_rejected_with_their_path(arg: ArgMatch, message: str) -> None:
    with pytest.raises(SeccompError, match=message):
        seccomp.compile_filter(profile(SyscallRule(("ioctl",), "SCMP_ACT_ALLOW", args=(arg,))))


def test_errno_out_of_range_is_rejected() -> None:
    with pytest.raises(SeccompError, match="errnoRet 65536 is out of range"):
        seccomp.compile_filter(profile(SyscallRule(("ioctl",), "SCMP_ACT_ERRNO", 1 << 16)))


def test_flags_map_to_bits_and_unknown_flags_are_rejected() -> None:
    assert seccomp.filter_flags(profile(flags=(
        "SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW"))) == 0b111
    with pytest.raises(SeccompError, match="SECCOMP_FILTER_FLAG_NEW_LISTENER' is not supp"):
        seccomp.filter_flags(profile(flags=("SECCOMP_FILTER_FLAG_NEW_LISTENER",)))


def test_hundreds_of_syscalls_per_action_need_long_jumps_and_stay_correct() -> None:
    names = sorted(X64)
    half = len(names) // 2
    prog = seccomp.compile_filter(profile(
        allow(*names[:half]), SyscallRule(tuple(names[half:]), "SCMP_ACT_ERRNO", 38),
        SyscallRule(("ioctl",), "SCMP_ACT_LOG", args=(ArgMatch(1, 5),)),
        arches=("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32")))
    assert len(prog) // 8 < seccomp.BPF_MAXINSNS
    for name in names:
        want = SECCOMP_RET_ALLOW if name in names[:half] else SECCOMP_RET_ERRNO | 38
        if name == "ioctl":
            assert run_bpf(prog, X64[name], args=(0, 5)) == SECCOMP_RET_LOG
        assert run_bpf(prog, X64[name]) == want, name
    for name, nr in syscalls.I386.items():
        want = SECCOMP_RET_ALLOW if name in names[:half] else (
            SECCOMP_RET_ERRNO | 38 if name in X64 else EPERM)
        assert run_bpf(prog, nr, AUDIT_ARCH_I386) == want, name


def test_a_profile_over_bpf_maxinsns_is_a_clear_error() -> None:
    rules = [SyscallRule(("ioctl",), "SCMP_ACT_ALLOW", args=(ArgMatch(1, n),)) for n in range(1000)]
    with pytest.raises(SeccompError, match=r"needs \d+ BPF instructions, more than .* 4096"):
        seccomp.compile_filter(profile(*rules))


def test_generated_syscall_table_matches_the_headers_on_this_machine() -> None:
    if not Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h").exists():
        pytest.skip("linux-libc-dev is not installed")
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_syscalls.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# A Docker-like allowlist (moby profiles/seccomp/default.json, resolved for root with
# the default capabilities); names this kernel does not know are skipped.
DOCKER_ALLOW = """
accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown
chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime
clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect
copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old
epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit
exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir
fchmod fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr
flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64
fsync ftruncate ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv
futex_wake futimesat getcpu getcwd getdents getdents64 getegid getegid32 geteuid
geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp
getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32
getrlimit get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid
gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init inotify_init1
inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents
io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit ipc kill landlock_add_rule
landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link linkat
listen listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise
map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat
mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive
mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap msgctl msgget
msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep newfstatat
_newselect open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc
pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64
process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read readahead
readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq
rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr
sched_getparam sched_get_priority_max sched_get_priority_min sched_getscheduler
sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr
sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop
semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto
setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32
setitimer setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid
setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid setsockopt
set_thread_area set_tid_address setuid setuid32 setxattr shmat shmctl shmdt shmget
shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn socketcall socketpair
splice stat stat64 statfs statfs64 statx symlink symlinkat sync sync_file_range
syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime
timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime
timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate truncate64
ugetrlimit umask uname unlink unlinkat utime utimensat utimensat_time64 utimes vfork
vmsplice wait4 waitid waitpid write writev arch_prctl modify_ldt chroot
""".split()


def docker_like_profile() -> SeccompProfile:
    return SeccompProfile(
        "SCMP_ACT_ERRNO", errno.EPERM,
        ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"), (),
        (SyscallRule(tuple(DOCKER_ALLOW), "SCMP_ACT_ALLOW"),
         SyscallRule(("socket",), "SCMP_ACT_ERRNO", errno.EINVAL,
                     (ArgMatch(0, 40, 0, "SCMP_CMP_EQ"),)),
         SyscallRule(("socket",), "SCMP_ACT_ALLOW"),
         SyscallRule(("personality",), "SCMP_ACT_ALLOW", None, (ArgMatch(0, 0),)),
         SyscallRule(("personality",), "SCMP_ACT_ALLOW", None, (ArgMatch(0, 8),)),
         SyscallRule(("personality",), "SCMP_ACT_ALLOW", None, (ArgMatch(0, 0x20000),)),
         SyscallRule(("personality",), "SCMP_ACT_ALLOW", None, (ArgMatch(0, 0x20008),)),
         SyscallRule(("personality",), "SCMP_ACT_ALLOW", None, (ArgMatch(0, 0xFFFFFFFF),)),
         SyscallRule(("clone",), "SCMP_ACT_ALLOW", None,
                     (ArgMatch(0, 0x7E020000, 0, "SCMP_CMP_MASKED_EQ"),)),
         SyscallRule(("clone3",), "SCMP_ACT_ERRNO", errno.ENOSYS)))


def test_docker_like_profile_compiles_well_under_the_limit() -> None:
    assert len(DOCKER_ALLOW) > 300
    prog = seccomp.compile_filter(docker_like_profile())
    assert len(prog) // 8 < 1500
    assert run_bpf(prog, X64["clone3"]) == SECCOMP_RET_ERRNO | errno.ENOSYS
    assert run_bpf(prog, X64["socket"], args=(40,)) == SECCOMP_RET_ERRNO | errno.EINVAL
    assert run_bpf(prog, X64["mount"]) == EPERM
    assert run_bpf(prog, syscalls.I386["socketcall"], AUDIT_ARCH_I386) == SECCOMP_RET_ALLOW


# --- the real kernel ------------------------------------------------------------------

def in_child(body: Callable[[], int]) -> int:
    """Fork; the child runs ``body`` (which installs a filter) and exits with its result."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = body()
        except BaseException:  # noqa: BLE001 - a child must never return into pytest
            code = 98
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def install(prof: SeccompProfile) -> None:
    seccomp.set_no_new_privs()
    seccomp.install(seccomp.compile_filter(prof), seccomp.filter_flags(prof))


def errno_of(call: Callable[[], object]) -> int:
    try:
        call()
    except OSError as exc:
        return exc.errno or -1
    return 0


def test_kernel_denied_mkdir_fails_with_eperm_while_getpid_works(tmp_path: Path) -> None:
    def body() -> int:
        install(profile(SyscallRule(("getpid",), "SCMP_ACT_ALLOW"),
                        SyscallRule(("mkdir", "mkdirat"), "SCMP_ACT_ERRNO"),
                        default="SCMP_ACT_ALLOW"))
        if os.getpid() <= 0:
            return 1
        return 0 if errno_of(lambda: os.mkdir(tmp_path / "d")) == errno.EPERM else 2

    assert os.waitstatus_to_exitcode(in_child(body)) == 0
    assert not (tmp_path / "d").exists()


def test_kernel_returns_a_custom_errno_with_all_supported_flags() -> None:
    def body() -> int:
        install(profile(SyscallRule(("mkdir", "mkdirat"), "SCMP_ACT_ERRNO", 38),
                        default="SCMP_ACT_ALLOW", flags=tuple(seccomp.FILTER_FLAGS)))
        return 0 if errno_of(lambda: os.mkdir("/nonexistent-dir/x")) == 38 else 2

    assert os.waitstatus_to_exitcode(in_child(body)) == 0


def test_kernel_applies_arg_rules_to_personality_and_socket() -> None:
    def body() -> int:
        install(profile(
            SyscallRule(("personality",), "SCMP_ACT_ERRNO", errno.EACCES,
                        (ArgMatch(0, 0xFFFFFFFF),)),
            SyscallRule(("socket",), "SCMP_ACT_ERRNO", errno.EAFNOSUPPORT,
                        (ArgMatch(0, 10),)),  # AF_INET6
            default="SCMP_ACT_ALLOW"))
        if errno_of(lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)) != 97:
            return 2
        if errno_of(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()) != 0:
            return 3
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.personality(ctypes.c_ulong(0xFFFFFFFF)) != -1 or ctypes.get_errno() != 13:
            return 4
        return 0 if libc.personality(ctypes.c_ulong(0)) != -1 else 5

    assert os.waitstatus_to_exitcode(in_child(body)) == 0


def test_kernel_kill_process_kills_with_sigsys() -> None:
    def body() -> int:
        install(profile(SyscallRule(("mkdir", "mkdirat"), "SCMP_ACT_KILL_PROCESS"),
                        default="SCMP_ACT_ALLOW"))
        os.mkdir("/nonexistent-dir/x")
        return 0

    status = in_child(body)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


def test_kernel_filter_without_no_new_privs_or_cap_needs_them() -> None:
    def body() -> int:
        if os.getuid() == 0:  # drop CAP_SYS_ADMIN
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
        prog = seccomp.compile_filter(profile(default="SCMP_ACT_ALLOW"))
        return 0 if errno_of(lambda: seccomp.install(prog)) == errno.EACCES else 2

    assert os.waitstatus_to_exitcode(in_child(body)) == 0


def test_kernel_runs_bin_true_under_the_docker_like_profile() -> None:
    def body() -> int:
        install(docker_like_profile())
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(b"none", b"/mnt", b"tmpfs", 0, None) != -1 or ctypes.get_errno() != 1:
            return 3
        os.execv("/bin/true", ["/bin/true"])
        return 4

    assert os.waitstatus_to_exitcode(in_child(body)) == 0


def i386_syscall(nr: int) -> Callable[[int], int]:
    """A function doing ``int $0x80`` (the i386 ABI, AUDIT_ARCH_I386) with eax=nr, ebx=arg."""
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    # push rbx; mov eax, nr; mov ebx, edi; int 0x80; pop rbx; ret
    page.write(b"\x53\xb8" + nr.to_bytes(4, "little") + b"\x89\xfb\xcd\x80\x5b\xc3")
    function = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(
        ctypes.addressof(ctypes.c_char.from_buffer(page)))

    def call(arg: int) -> int:
        assert not page.closed  # the closure keeps the mapping alive
        return int(function(arg))

    return call


def test_kernel_i386_calls_get_bad_arch_kill_unless_x86_is_listed() -> None:
    getpid32 = i386_syscall(syscalls.I386["getpid"])
    if getpid32(0) != os.getpid():
        pytest.skip("this kernel has no ia32 emulation")

    def unlisted() -> int:
        install(profile(default="SCMP_ACT_ALLOW"))
        getpid32(0)
        return 0

    status = in_child(unlisted)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS

    def listed() -> int:
        getppid32 = i386_syscall(syscalls.I386["getppid"])
        install(profile(SyscallRule(("getpid",), "SCMP_ACT_ERRNO", 38), default="SCMP_ACT_ALLOW",
                        arches=("SCMP_ARCH_X86_64", "SCMP_ARCH_X86")))
        return 0 if getpid32(0) == -38 and getppid32(0) == os.getppid() else 2

    assert os.waitstatus_to_exitcode(in_child(listed)) == 0


def test_kernel_x32_calls_get_bad_arch_kill_unless_x32_is_listed() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    x32_getpid = ctypes.c_long(syscalls.X32["getpid"])

    def unlisted() -> int:
        install(profile(default="SCMP_ACT_ALLOW"))
        libc.syscall(x32_getpid)
        return 0

    status = in_child(unlisted)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS

    def listed() -> int:  # 77, not the ENOSYS of a kernel without x32: the filter answered
        install(profile(SyscallRule(("getpid",), "SCMP_ACT_ERRNO", 77), default="SCMP_ACT_ALLOW",
                        arches=("SCMP_ARCH_X86_64", "SCMP_ARCH_X32")))
        return 0 if libc.syscall(x32_getpid) == -1 and ctypes.get_errno() == 77 else 2

    assert os.waitstatus_to_exitcode(in_child(listed)) == 0
