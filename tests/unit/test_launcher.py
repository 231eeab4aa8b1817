"""The container launcher, run for real as root on a busybox rootfs.

Each test writes a launch description, starts `python -m kata_py.agent.launcher`
with the sync/start pipes the agent would pass, starts the container by writing
to the start fd and reads its stdout. Everything mounts inside the launcher's
private mount namespace; a fixture checks that this process's mount table is
unchanged afterwards. The cgroup tests mount their own cgroup2 under a temp dir
(hybrid hosts have no v2 controllers: limits are then checked as file values).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import pickle
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from kata_py.agent import cgroups, launch_config, linux, mounts
from kata_py.agent.launch_config import (
    Capabilities,
    Cgroup,
    Fds,
    LaunchConfig,
    LaunchConfigError,
    Mount,
    Namespace,
    Process,
    Resources,
    Rlimit,
)

BUSYBOX = Path("/bin/busybox")
LAUNCH_TIMEOUT_S = 30.0

DEFAULT_MOUNTS = (
    Mount("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),
    Mount("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
    Mount("/dev/pts", "devpts", "devpts",
          ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5")),
    Mount("/dev/shm", "tmpfs", "shm", ("nosuid", "noexec", "nodev", "mode=1777")),
    Mount("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")),
    Mount("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", "ro")),
    Mount("/tmp", "tmpfs", "tmpfs", ("nosuid", "nodev")),
)
ALL_NAMESPACES = tuple(Namespace(t) for t in ("pid", "mount", "uts", "ipc", "network"))


# --- fixtures -------------------------------------------------------------------

@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A busybox rootfs: /bin/busybox + applet symlinks, a few files to mask."""
    return _busybox_rootfs(tmp_path)


@pytest.fixture
def reachable_rootfs(tmp_path: Path) -> Iterator[Path]:
    """A busybox rootfs that the root of a user namespace (not root outside)
    can reach: pytest's own directories are 0700."""
    top = Path(tempfile.mkdtemp(prefix="kp-userns-", dir="/tmp"))
    top.chmod(0o711)
    try:
        yield _busybox_rootfs(top)
    finally:
        shutil.rmtree(top)


def _busybox_rootfs(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("the launcher needs root")
    if not BUSYBOX.exists():
        pytest.skip("no /bin/busybox: apt-get install busybox-static")
    root = tmp_path / "rootfs"
    for d in ("bin", "proc", "dev", "sys", "tmp", "etc/secretdir", "data", "home/user"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc/secret").write_text("top secret\n")
    (root / "etc/secretdir/key").write_text("key\n")
    (root / "data/file").write_text("data\n")
    os.chown(root / "home/user", 1000, 1000)
    for path in (tmp_path, root):
        path.chmod(0o755)
    return root


@pytest.fixture(autouse=True)
def no_mounts_leak(tmp_path: Path) -> Iterator[None]:
    """No mount below the test's directory survives it (other mounts on the
    host may come and go meanwhile: podman, network namespaces)."""
    yield
    ours = [line for line in Path("/proc/self/mounts").read_text().splitlines()
            if str(tmp_path) in line]
    assert ours == []


@dataclass
class Run:
    stdout: str
    stderr: str
    sync: list[dict[str, Any]]
    returncode: int


def make_config(rootfs: Path, args: tuple[str, ...], **overrides: Any) -> LaunchConfig:
    process_fields = {f.name for f in dataclasses.fields(Process)}
    given = {k: v for k, v in overrides.items() if k in process_fields}
    given.setdefault("env", ("PATH=/bin", "HOME=/"))
    process = Process(args=args, **given)
    rest = {k: v for k, v in overrides.items() if k not in process_fields}
    rest.setdefault("namespaces", ALL_NAMESPACES)
    rest.setdefault("mounts", DEFAULT_MOUNTS)
    return LaunchConfig(container_id="test", rootfs=str(rootfs), process=process,
                        fds=Fds(sync=0, start=0), **rest)


def _read_lines(fd: int, until: set[str], deadline: float) -> list[dict[str, Any]]:
    """Sync lines until one has a key in `until` (or EOF)."""
    buf = b""
    lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            lines.append(json.loads(line))
            if until & set(lines[-1]):
                return lines
    return lines


def spawn(config: LaunchConfig, stdio: int | None = None,
          extra_fds: tuple[int, ...] = ()) -> tuple[subprocess.Popen[str], int, int]:
    """Start the launcher like the agent does: (process, sync read end, start write end)."""
    cfg_r, cfg_w = os.pipe()
    sync_r, sync_w = os.pipe()
    start_r, start_w = os.pipe()
    config = replace(config, fds=replace(config.fds, sync=sync_w, start=start_r))
    os.write(cfg_w, launch_config.to_json(config).encode())
    os.close(cfg_w)
    stdin = subprocess.DEVNULL if stdio is None else stdio
    out = subprocess.PIPE if stdio is None else stdio
    proc = subprocess.Popen(
        [sys.executable, "-m", "kata_py.agent.launcher", "--config-fd", str(cfg_r)],
        pass_fds=(cfg_r, sync_w, start_r, *extra_fds), stdin=stdin, stdout=out, stderr=out,
        text=True)
    for fd in (cfg_r, sync_w, start_r):
        os.close(fd)
    return proc, sync_r, start_w


def launch(config: LaunchConfig, start: bool = True,
           before_start: Callable[[list[dict[str, Any]]], None] | None = None,
           stdio: int | None = None, extra_fds: tuple[int, ...] = ()) -> Run:
    """Run the launcher to the end; start it (or close the start fd)."""
    proc, sync_r, start_w = spawn(config, stdio, extra_fds)
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    try:
        sync = _read_lines(sync_r, {"created", "error"}, deadline)
        if before_start is not None:
            before_start(sync)
        if start and any("created" in line for line in sync):
            try:
                os.write(start_w, b"\0")
            except BrokenPipeError:
                pass  # killed by before_start
        os.close(start_w)
        start_w = -1
        stdout, stderr = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
        sync += _read_lines(sync_r, set(), deadline)
    finally:
        if start_w >= 0:
            os.close(start_w)
        os.close(sync_r)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Run(stdout or "", stderr or "", sync, proc.returncode)


@contextmanager
def running(config: LaunchConfig) -> Iterator[int]:
    """A started container left running; yields its pid, SIGKILLs it afterwards."""
    proc, sync_r, start_w = spawn(config)
    pid = 0
    try:
        sync = _read_lines(sync_r, {"created", "error"}, time.monotonic() + LAUNCH_TIMEOUT_S)
        assert "created" in sync[-1], sync
        pid = sync[-1]["created"]
        os.write(start_w, b"\0")
        _read_lines(sync_r, set(), time.monotonic() + LAUNCH_TIMEOUT_S)  # EOF: exec'd
        yield pid
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=LAUNCH_TIMEOUT_S)
        os.close(start_w)
        os.close(sync_r)


def run_sh(rootfs: Path, script: str, **overrides: Any) -> Run:
    result = launch(make_config(rootfs, ("sh", "-c", script), **overrides))
    assert result.returncode == 0, result
    return result


# --- the launch description ----------------------------------------------------

def test_launch_description_round_trips_through_json(tmp_path: Path) -> None:
    config = make_config(tmp_path, ("true",), uid=5, capabilities=Capabilities(("CAP_KILL",)),
                         rlimits=(Rlimit("RLIMIT_NOFILE", 1, 2),), sysctl={"a.b": "1"},
                         cgroup=Cgroup("x/y", Resources(memory_limit=1 << 20)))
    assert launch_config.from_json(launch_config.to_json(config)) == config


def test_the_agent_hands_the_launcher_its_checked_description_pickled(tmp_path: Path) -> None:
    config = make_config(tmp_path, ("true",), sysctl={"a.b": "1"},
                         cgroup=Cgroup("x/y", Resources(memory_limit=1 << 20)))
    wire = launch_config.to_launcher(config)
    assert wire[:1] == b"\x80"
    assert launch_config.from_launcher(wire) == config
    # JSON (a launcher started by hand) is still read, as strictly as ever
    assert launch_config.from_launcher(launch_config.to_json(config).encode()) == config
    with pytest.raises(LaunchConfigError, match="a pickled list, not a LaunchConfig"):
        launch_config.from_launcher(pickle.dumps([1], protocol=2))
    with pytest.raises(LaunchConfigError, match="bad pickle"):
        launch_config.from_launcher(wire[:20])


def test_the_agent_resolves_every_description_class_before_it_is_ready(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A VM restored from a template starts with them: the first from_json
    of each VM does not pay for typing.get_type_hints (≈ 0.1 s under TCG)."""
    from kata_py.agent.containers import ContainerManager
    from kata_py.agent.reaper import Reaper

    monkeypatch.setattr(launch_config, "_FIELDS", {})
    ContainerManager(Reaper())
    every = {cls for cls in vars(launch_config).values()
             if dataclasses.is_dataclass(cls) and cls.__module__ == launch_config.__name__}
    assert set(launch_config._FIELDS) == every


def test_launch_description_rejects_unknown_fields_with_their_path(tmp_path: Path) -> None:
    raw = json.loads(launch_config.to_json(make_config(tmp_path, ("true",))))
    raw["process"]["user_name"] = "x"
    with pytest.raises(LaunchConfigError, match=r"^process\.user_name: unknown field"):
        launch_config.from_json(json.dumps(raw))


def test_launch_description_rejects_wrong_types_with_their_path(tmp_path: Path) -> None:
    raw = json.loads(launch_config.to_json(make_config(tmp_path, ("true",))))
    raw["process"]["uid"] = "0"
    with pytest.raises(LaunchConfigError, match=r"^process\.uid: expected an integer"):
        launch_config.from_json(json.dumps(raw))


def test_mount_options_split_into_flags_propagation_and_data() -> None:
    flags, propagation, data = mounts.parse_options(
        ("rbind", "ro", "nosuid", "rprivate", "mode=755", "size=1k", "rw"))
    assert flags == linux.MS_BIND | linux.MS_REC | linux.MS_NOSUID
    assert propagation == (linux.MS_PRIVATE | linux.MS_REC,)
    assert data == "mode=755,size=1k"


def test_runc_extensions_and_flag_options_are_not_mount_data() -> None:
    flags, _, data = mounts.parse_options(
        ("tmpcopyup", "iversion", "lazytime", "silent", "nosuid", "mode=1777"))
    assert flags == linux.MS_I_VERSION | linux.MS_LAZYTIME | linux.MS_SILENT | linux.MS_NOSUID
    assert data == "mode=1777"


def test_tmpcopyup_starts_the_tmpfs_with_the_image_s_files(rootfs: Path) -> None:
    (rootfs / "seeded").mkdir()
    (rootfs / "seeded" / "sub").mkdir()
    (rootfs / "seeded" / "sub" / "f").write_text("from the image\n")
    (rootfs / "seeded" / "link").symlink_to("sub/f")
    (rootfs / "seeded" / "sub" / "f").chmod(0o640)
    os.chown(rootfs / "seeded" / "sub" / "f", 1000, 1000)
    tmpfs = Mount("/seeded", "tmpfs", "tmpfs", ("nosuid", "tmpcopyup", "mode=755"))
    out = run_sh(rootfs, "cat /seeded/link; stat -c '%a %u' /seeded/sub/f; "
                 "awk '$5 == \"/seeded\" {print $9}' /proc/self/mountinfo; "
                 "echo new > /seeded/sub/f; cat /seeded/sub/f",
                 mounts=(*DEFAULT_MOUNTS, tmpfs)).stdout.split("\n")
    assert out[:4] == ["from the image", "640 1000", "tmpfs", "new"]
    assert (rootfs / "seeded" / "sub" / "f").read_text() == "from the image\n"  # image intact


def test_secure_join_keeps_symlinks_inside_the_rootfs(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "escape").symlink_to("/etc")
    (tmp_path / "up").symlink_to("../../../..")
    assert mounts.secure_join(str(tmp_path), "/escape/passwd") == str(tmp_path / "etc/passwd")
    assert mounts.secure_join(str(tmp_path), "/up/x") == str(tmp_path / "x")


# --- the container ---------------------------------------------------------------

def test_container_is_pid_1_in_new_namespaces(rootfs: Path) -> None:
    script = ("echo pid=$$; hostname; for n in pid mnt uts ipc net; do "
              "echo $n=$(readlink /proc/self/ns/$n); done")
    out = run_sh(rootfs, script, hostname="box").stdout.splitlines()
    assert out[0] == "pid=1"
    assert out[1] == "box"
    for line in out[2:]:
        name, ns = line.split("=", 1)
        assert ns != os.readlink(f"/proc/self/ns/{name}"), name


def test_the_container_starts_with_no_signal_ignored_or_blocked(rootfs: Path) -> None:
    """The launcher is Python, which ignores SIGPIPE and SIGXFSZ; an ignored
    signal survives execve, so it must be reset (runc's containers start with
    none ignored, and `yes | head -1` must end by SIGPIPE)."""
    result = launch(make_config(rootfs, ("grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status")))
    assert result.returncode == 0, result
    assert sorted(result.stdout.split()) == ["0000000000000000", "0000000000000000",
                                             "SigBlk:", "SigIgn:"]
    r = launch(make_config(rootfs, ("sh", "-c", "yes | head -1 >/dev/null; yes 2>&1 | true")))
    assert (r.returncode, r.stdout) == (0, ""), r


def test_sync_fd_reports_outer_pid_then_created(rootfs: Path) -> None:
    result = launch(make_config(rootfs, ("true",)))
    assert result.returncode == 0
    assert [list(line) for line in result.sync] == [["pid"], ["created"]]
    assert result.sync[0]["pid"] == result.sync[1]["created"] > 1


def test_container_sees_only_its_rootfs_with_proc_mounted(rootfs: Path) -> None:
    out = run_sh(rootfs, "ls /; echo --; tr '\\0' ' ' < /proc/1/cmdline; echo; echo --; "
                         "ls /dev; echo --; readlink /dev/ptmx; readlink /dev/fd").stdout
    root, cmdline, dev, links = out.split("--\n")
    assert root.split() == ["bin", "data", "dev", "etc", "home", "proc", "sys", "tmp"]
    assert cmdline.startswith("sh -c ls /;")
    for name in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue",
                 "ptmx", "fd", "stdin", "stdout", "stderr"):
        assert name in dev.split(), dev
    assert links.split() == ["pts/ptmx", "/proc/self/fd"]


def test_default_devices_are_usable(rootfs: Path) -> None:
    out = run_sh(rootfs, "echo hi > /dev/null && head -c 4 /dev/zero | wc -c && "
                         "stat -c '%t:%T %a' /dev/null /dev/urandom").stdout.split()
    assert out == ["4", "1:3", "666", "1:9", "666"]


def test_process_env_cwd_and_credentials_are_as_described(rootfs: Path) -> None:
    out = run_sh(rootfs, "id; pwd; umask; env | sort", uid=1000, gid=1000,
                 additional_gids=(10, 20), umask=0o027, cwd="/home/user",
                 env=("PATH=/bin", "FOO=bar baz")).stdout.splitlines()
    assert out[0] == "uid=1000 gid=1000 groups=10,20"
    assert out[1:3] == ["/home/user", "0027"]
    assert "FOO=bar baz" in out and "PATH=/bin" in out
    assert "HOME=/" in out       # no /etc/passwd in this rootfs: runc's default home


def test_home_is_the_uid_s_from_the_containers_passwd_when_env_lacks_it(
        rootfs: Path) -> None:
    (rootfs / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n# a comment\nbroken\n"
        "user:x:1000:1000:User:/home/user:/bin/sh\nagain:x:1000:1000::/elsewhere:/bin/sh\n")
    homes = {}
    for uid, env in ((0, ()), (1000, ()), (2000, ()), (1000, ("HOME=/custom",)),
                     (1000, ("HOME=",))):
        out = run_sh(rootfs, 'echo "$HOME"; env | grep -c ^HOME=', uid=uid, gid=uid,
                     env=("PATH=/bin", *env)).stdout.split()
        assert out[1] == "1", out          # exactly one HOME
        homes[(uid, env)] = out[0]
    assert homes == {(0, ()): "/root", (1000, ()): "/home/user", (2000, ()): "/",
                     (1000, ("HOME=/custom",)): "/custom", (1000, ("HOME=",)): "/home/user"}


def test_a_missing_cwd_is_created_by_root_with_mode_0755(rootfs: Path) -> None:
    """runc's prepareRootfs: MkdirAll(cwd, 0755) in the new root, as root,
    before the root turns read-only; the process then runs as its user."""
    out = run_sh(rootfs, "pwd; id -u; stat -c '%a %u' /new /new/deep/cwd", uid=1000,
                 gid=1000, cwd="/new/deep/cwd", readonly_rootfs=True).stdout.split("\n")
    assert out[:4] == ["/new/deep/cwd", "1000", "755 0", "755 0"]
    assert (rootfs / "new/deep/cwd").is_dir()


def test_a_cwd_that_is_a_file_fails_the_create_by_name(rootfs: Path) -> None:
    result = launch(make_config(rootfs, ("true",), cwd="/etc/secret"))
    assert result.returncode == 1
    assert result.sync[-1] == {"error": "mkdir cwd /etc/secret: File exists"}


def test_readonly_root_refuses_writes(rootfs: Path) -> None:
    out = run_sh(rootfs, "touch /newfile 2>/dev/null; echo root=$?; "
                         "touch /tmp/ok; echo tmp=$?", readonly_rootfs=True).stdout
    assert out.split() == ["root=1", "tmp=0"]
    assert not (rootfs / "newfile").exists()


def test_masked_paths_read_empty_and_readonly_paths_refuse_writes(rootfs: Path) -> None:
    out = run_sh(rootfs, "echo \"[$(cat /etc/secret)]\"; ls /etc/secretdir | wc -l; "
                         "touch /data/x 2>/dev/null; echo data=$?; cat /data/file",
                 masked_paths=("/etc/secret", "/etc/secretdir", "/missing"),
                 readonly_paths=("/data", "/missing2")).stdout.split()
    assert out == ["[]", "0", "data=1", "data"]


def test_capabilities_are_limited_to_the_described_sets(rootfs: Path) -> None:
    names = ("CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE")
    caps = Capabilities(bounding=names, effective=names, permitted=names)
    out = run_sh(rootfs, "grep -E '^Cap(Eff|Bnd|Prm)' /proc/self/status",
                 capabilities=caps).stdout
    fields = dict(line.split(":\t") for line in out.splitlines())
    assert fields == {"CapPrm": "0000000000000421", "CapEff": "0000000000000421",
                      "CapBnd": "0000000000000421"}


def test_non_root_user_keeps_ambient_capabilities(rootfs: Path) -> None:
    names = ("CAP_NET_BIND_SERVICE",)
    caps = Capabilities(names, names, names, names, names)
    out = run_sh(rootfs, "grep -E '^Cap(Eff|Amb)' /proc/self/status; id -u",
                 capabilities=caps, uid=1000, gid=1000).stdout
    assert out.split() == ["CapEff:", "0000000000000400", "CapAmb:", "0000000000000400",
                           "1000"]


def _status_caps(out: str) -> dict[str, str]:
    return dict(line.split(":\t") for line in out.splitlines() if line.startswith("Cap"))


RUNC_SPEC_CAPS = ("CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE")   # `runc spec`'s


def test_ambient_capabilities_the_kernel_refuses_are_warnings_as_in_runc(
        rootfs: Path) -> None:
    """`runc spec` lists ambient capabilities with an empty inheritable set:
    the kernel refuses to raise them (PR_CAP_AMBIENT_RAISE needs permitted
    and inheritable); runc raises what it can and warns about the rest."""
    caps = Capabilities(bounding=RUNC_SPEC_CAPS, effective=RUNC_SPEC_CAPS,
                        permitted=RUNC_SPEC_CAPS, ambient=RUNC_SPEC_CAPS)
    result = launch(make_config(rootfs, ("grep", "^Cap", "/proc/self/status"),
                                capabilities=caps))
    assert result.returncode == 0, result
    assert _status_caps(result.stdout) == {
        "CapInh": "0000000000000000", "CapPrm": "0000000020000420",
        "CapEff": "0000000020000420", "CapBnd": "0000000020000420",
        "CapAmb": "0000000000000000"}
    assert [line["warning"] for line in result.sync if "warning" in line] == [
        f"can't raise ambient capability {name}: Operation not permitted"
        for name in ("CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE")]
    # runc's own test: CAP_KILL raised, CAP_CHOWN (not inheritable) a warning
    caps = Capabilities(bounding=RUNC_SPEC_CAPS + ("CAP_CHOWN",),
                        permitted=RUNC_SPEC_CAPS + ("CAP_CHOWN",), inheritable=("CAP_KILL",),
                        ambient=("CAP_KILL", "CAP_CHOWN"))
    result = launch(make_config(rootfs, ("grep", "^CapAmb", "/proc/self/status"),
                                capabilities=caps, uid=1000, gid=1000))
    assert result.returncode == 0, result
    assert result.stdout.split() == ["CapAmb:", "0000000000000020"]
    assert [line for line in result.sync if "warning" in line] == [
        {"warning": "can't raise ambient capability CAP_CHOWN: Operation not permitted"}]


def test_capability_names_the_launcher_does_not_know_are_ignored(rootfs: Path) -> None:
    names = ("CAP_KILL", "CAP_FLY")
    caps = Capabilities(bounding=names, effective=names, permitted=names)
    result = launch(make_config(rootfs, ("grep", "^CapEff", "/proc/self/status"),
                                capabilities=caps))
    assert result.returncode == 0, result
    assert result.stdout.split() == ["CapEff:", "0000000000000020"]


def test_no_new_privileges_is_set(rootfs: Path) -> None:
    out = run_sh(rootfs, "grep NoNewPrivs /proc/self/status", no_new_privileges=True).stdout
    assert out.split() == ["NoNewPrivs:", "1"]


def test_rlimit_and_oom_score_adj_apply(rootfs: Path) -> None:
    out = run_sh(rootfs, "ulimit -n; cat /proc/self/oom_score_adj",
                 rlimits=(Rlimit("RLIMIT_NOFILE", 512, 512),), oom_score_adj=500).stdout
    assert out.split() == ["512", "500"]


def test_domainname_and_sysctl_apply(rootfs: Path) -> None:
    out = run_sh(rootfs, "cat /proc/sys/kernel/domainname /proc/sys/net/ipv4/ip_forward",
                 domainname="example.org", sysctl={"net.ipv4.ip_forward": "1"}).stdout
    assert out.split() == ["example.org", "1"]


def test_bind_mount_read_only_via_remount(rootfs: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "f").write_text("hello\n")
    bind = Mount("/mnt/shared", "bind", str(shared), ("rbind", "ro"))
    out = run_sh(rootfs, "cat /mnt/shared/f; touch /mnt/shared/g 2>/dev/null; echo rc=$?",
                 mounts=(*DEFAULT_MOUNTS, bind)).stdout
    assert out.split() == ["hello", "rc=1"]
    assert not (shared / "g").exists()


def test_no_pivot_moves_the_root(rootfs: Path) -> None:
    out = run_sh(rootfs, "echo $$; ls /", no_pivot=True).stdout.split()
    assert out[0] == "1" and "bin" in out


def test_shared_root_propagation_still_pivots(rootfs: Path) -> None:
    out = run_sh(rootfs, "awk '$5 == \"/\"' /proc/self/mountinfo", rootfs_propagation="rshared")
    assert "shared:" in out.stdout


def test_exit_status_is_the_containers(rootfs: Path) -> None:
    result = launch(make_config(rootfs, ("sh", "-c", "exit 42")))
    assert result.returncode == 42


def test_killed_container_kills_the_launcher_with_the_same_signal(rootfs: Path) -> None:
    def kill(sync: list[dict[str, Any]]) -> None:
        os.kill(sync[0]["pid"], signal.SIGKILL)

    result = launch(make_config(rootfs, ("true",)), before_start=kill)
    assert result.returncode == -signal.SIGKILL


def test_a_missing_binary_fails_before_created_in_go_s_words(rootfs: Path) -> None:
    for name, message in (
            ("/bin/nope", 'exec: "/bin/nope": stat /bin/nope: no such file or directory'),
            ("nope", 'exec: "nope": executable file not found in $PATH'),
            ("/etc", 'exec: "/etc": permission denied')):
        result = launch(make_config(rootfs, (name,)))
        assert result.returncode == 127
        assert result.sync == [result.sync[0], {"error": message}] or result.sync == [
            {"error": message}], result.sync       # {"pid"} first when it forked
        assert not any("created" in line for line in result.sync)


def test_closing_the_start_fd_exits_without_running_the_process(rootfs: Path) -> None:
    result = launch(make_config(rootfs, ("sh", "-c", "echo ran; touch /tmp/../ran")),
                    start=False)
    assert result.returncode == 0
    assert result.stdout == ""
    assert not (rootfs / "ran").exists()


def test_failed_setup_step_is_reported_by_name(rootfs: Path) -> None:
    bad = Mount("/bad", "nosuchfs", "none")
    result = launch(make_config(rootfs, ("true",), mounts=(*DEFAULT_MOUNTS, bad)))
    assert result.returncode == 1
    assert result.sync[-1] == {"error": "mount nosuchfs none on /bad: No such device"}


def test_without_a_pid_namespace_the_launcher_itself_becomes_the_process(
        rootfs: Path) -> None:
    result = launch(make_config(rootfs, ("sh", "-c", "echo $$"),
                                namespaces=(Namespace("mount"),)))
    assert result.returncode == 0
    assert [list(line) for line in result.sync] == [["created"]]
    assert result.stdout.strip() == str(result.sync[0]["created"])


def test_exec_into_a_running_container_joins_its_namespaces(rootfs: Path) -> None:
    with running(make_config(rootfs, ("sleep", "30"), hostname="box")) as pid:
        joined = tuple(Namespace(t, f"/proc/{pid}/ns/{n}") for t, n in
                       (("pid", "pid"), ("ipc", "ipc"), ("uts", "uts"), ("network", "net"),
                        ("mount", "mnt")))
        config = make_config(Path("/nonexistent"), ("sh", "-c", "hostname; ls /; cat /proc/1/comm"),
                             namespaces=joined, mounts=())
        result = launch(config)
    assert result.returncode == 0, result
    host, *rest = result.stdout.split()
    assert host == "box"
    assert rest[:-1] == ["bin", "data", "dev", "etc", "home", "proc", "sys", "tmp"]
    assert rest[-1] == "sleep"  # the container's init, seen from its pid namespace


def test_exec_gets_home_from_passwd_and_fails_on_a_missing_cwd_in_runc_s_words(
        rootfs: Path) -> None:
    """An exec's HOME comes from the container's /etc/passwd too; its cwd is
    not created (runc creates only the init's): chdir fails, as runc's does."""
    (rootfs / "etc/passwd").write_text("user:x:1000:1000::/home/user:/bin/sh\n")
    with running(make_config(rootfs, ("sleep", "30"))) as pid:
        joined = tuple(Namespace(t, f"/proc/{pid}/ns/{n}") for t, n in
                       (("pid", "pid"), ("ipc", "ipc"), ("uts", "uts"), ("network", "net"),
                        ("mount", "mnt")))
        home = launch(make_config(Path("/nonexistent"), ("sh", "-c", "echo $HOME; pwd"),
                                  namespaces=joined, mounts=(), uid=1000, gid=1000,
                                  cwd="/home/user", env=("PATH=/bin",)))
        missing = launch(make_config(Path("/nonexistent"), ("true",), namespaces=joined,
                                     mounts=(), cwd="/nope"))
    assert (home.returncode, home.stdout.split()) == (0, ["/home/user", "/home/user"]), home
    assert missing.returncode == 1
    assert missing.sync[-1] == {
        "error": 'chdir to cwd ("/nope") set in config.json: No such file or directory'}
    assert not (rootfs / "nope").exists()


def test_only_stdio_is_left_open_in_the_container(rootfs: Path) -> None:
    # a child of the shell inherits exactly what the launcher left open
    out = run_sh(rootfs, "sleep 5 & ls /proc/$!/fd; kill $!").stdout.split()
    assert out == ["0", "1", "2"]


def _read_pty(master: int) -> str:
    output = b""
    while select.select([master], [], [], LAUNCH_TIMEOUT_S)[0]:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: every slave fd is closed
            break
        if not chunk:
            break
        output += chunk
    return output.decode()


TTY_SCRIPT = ("tty; echo sid=$(cut -d' ' -f6 /proc/self/stat) "
              "tty_nr=$(cut -d' ' -f7 /proc/self/stat)")


def test_console_socket_receives_a_pty_from_the_containers_devpts(rootfs: Path) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    masters: list[int] = []

    def receive_console(sync: list[dict[str, Any]]) -> None:
        _, fds, _, _ = socket.recv_fds(ours, 64, 1)
        masters.extend(fds)

    try:
        config = make_config(rootfs, ("sh", "-c", TTY_SCRIPT + "; stty size"), terminal=True,
                             console_rows=30, console_cols=100)
        config = replace(config, fds=replace(config.fds, console_socket=theirs.fileno()))
        result = launch(config, before_start=receive_console, extra_fds=(theirs.fileno(),))
        theirs.close()
        output = _read_pty(masters[0])
    finally:
        ours.close()
        theirs.close()
        for fd in masters:
            os.close(fd)
    assert result.returncode == 0, result
    words = output.split()
    assert words[:2] == ["/dev/pts/0", "sid=1"]
    assert words[2] != "tty_nr=0"
    assert words[3:] == ["30", "100"]       # process.consoleSize, before any resize


def test_terminal_passed_as_stdin_becomes_the_controlling_tty(rootfs: Path) -> None:
    master, slave = os.openpty()
    try:
        result = launch(make_config(rootfs, ("sh", "-c", TTY_SCRIPT), terminal=True),
                        stdio=slave)
        os.close(slave)
        slave = -1
        output = _read_pty(master)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert result.returncode == 0, result
    # the guest's pty is not in the container's own devpts instance: no name, but a ctty
    assert output.split()[-3:-1] == ["tty", "sid=1"]
    assert output.split()[-1] != "tty_nr=0"


def _seccomp_program(**fields: Any) -> dict[str, Any]:
    """The launch description's fields for a profile denying mkdir, compiled
    as the host compiles linux.seccomp."""
    seccomp = pytest.importorskip("kata_py.agent.seccomp")
    rule = seccomp.SyscallRule(names=("mkdir", "mkdirat"), action="SCMP_ACT_ERRNO",
                               errno_ret=1)
    program, flags = seccomp.compile_description(dataclasses.asdict(
        seccomp.SeccompProfile(default_action="SCMP_ACT_ALLOW", syscalls=(rule,), **fields)))
    return {"seccomp_program": base64.b64encode(program).decode(), "seccomp_flags": flags}


@pytest.mark.parametrize("no_new_privileges", [True, False])
def test_seccomp_profile_is_enforced(rootfs: Path, no_new_privileges: bool) -> None:
    out = run_sh(rootfs, "mkdir /tmp/d 2>/dev/null; echo rc=$?; grep Seccomp: /proc/self/status",
                 **_seccomp_program(), no_new_privileges=no_new_privileges).stdout
    assert out.split() == ["rc=1", "Seccomp:", "2"]


# --- cgroup v2 -----------------------------------------------------------------------

def test_resources_map_onto_cgroup_v2_files() -> None:
    res = Resources(memory_limit=64 << 20, memory_swap=96 << 20, memory_reservation=-1,
                    cpu_shares=1024, cpu_quota=50_000, cpu_period=100_000, pids_limit=-1,
                    cpuset_cpus="0", unified={"io.weight": "50"})
    assert cgroups.resource_files(res) == {
        "cpuset.cpus": "0", "memory.low": "max", "memory.max": str(64 << 20),
        "memory.swap.max": str(32 << 20), "cpu.weight": "39", "cpu.max": "50000 100000",
        "pids.max": "max", "io.weight": "50"}
    assert cgroups.cpu_weight_from_shares(2) == 1
    assert cgroups.cpu_weight_from_shares(262144) == 10000


def test_swap_without_memory_limit_is_rejected() -> None:
    with pytest.raises(ValueError, match="needs a memory limit"):
        cgroups.resource_files(Resources(memory_swap=1 << 20))


@pytest.fixture
def cgroup2(tmp_path: Path) -> Iterator[Path]:
    """A private cgroup2 mount (the same v2 hierarchy, seen at a temp path)."""
    if os.geteuid() != 0:
        pytest.skip("mounting cgroup2 needs root")
    mnt = tmp_path / "cgroup2"
    mnt.mkdir()
    try:
        linux.mount("cgroup2", str(mnt), "cgroup2")
    except OSError as exc:
        pytest.skip(f"cannot mount cgroup2 here: {exc}")
    try:
        yield mnt
    finally:
        linux.umount2(str(mnt), linux.MNT_DETACH)


def test_container_joins_its_cgroup_and_sees_it_as_root(rootfs: Path, cgroup2: Path) -> None:
    name = f"kata-py-test-{os.getpid()}"
    cg = Cgroup(name, root=str(cgroup2))
    try:
        out = run_sh(rootfs, "cat /proc/self/cgroup | grep '^0::'",
                     namespaces=(*ALL_NAMESPACES, Namespace("cgroup")), cgroup=cg).stdout
        assert out.strip() == "0::/"
        assert (cgroup2 / name).is_dir()
    finally:
        cgroups.remove(cgroup2 / name)


def test_cgroup_freeze_thaw_and_stats(cgroup2: Path) -> None:
    path = cgroups.create(Cgroup(f"kata-py-test-{os.getpid()}-freeze", root=str(cgroup2)))
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        cgroups.join(path, sleeper.pid)
        assert (path / "cgroup.procs").read_text().split() == [str(sleeper.pid)]
        cgroups.freeze(path)
        assert "frozen 1" in (path / "cgroup.events").read_text()
        cgroups.thaw(path)
        assert "frozen 0" in (path / "cgroup.events").read_text()
        files = cgroups.interface_files(path)
        if "pids" in (cgroup2 / "cgroup.controllers").read_text().split():
            assert files["pids.current"] == "1\n"
        assert not any(name.startswith("cgroup.") for name in files)
    finally:
        sleeper.kill()
        sleeper.wait()
        for _ in range(100):
            if not (path / "cgroup.procs").read_text().strip():
                break
            time.sleep(0.01)
        cgroups.remove(path)


def test_unavailable_cgroup_controller_is_reported(rootfs: Path, cgroup2: Path) -> None:
    if "pids" in (cgroup2 / "cgroup.controllers").read_text().split():
        pytest.skip("the pids controller is available on cgroup2 here")
    name = f"kata-py-test-{os.getpid()}-nopids"
    cg = Cgroup(name, Resources(pids_limit=10), str(cgroup2))
    try:
        result = launch(make_config(rootfs, ("true",), cgroup=cg))
    finally:
        cgroups.remove(cgroup2 / name)
    assert result.returncode == 1
    assert result.sync == [{"error": f"cgroup {name}: {cgroup2 / name / 'pids.max'}: no such "
                                     "cgroup file (controller 'pids' not available)"}]


def test_the_agent_prepares_the_containers_parent_cgroup(tmp_path: Path) -> None:
    """Delegated once at agent start (part of a VM template): root and parent
    enable the default controllers the root has, and nothing else."""
    parent = tmp_path / "kata-py"
    parent.mkdir()
    for cg, controllers, enabled in ((tmp_path, "cpuset cpu io memory pids", "io"),
                                     (parent, "cpu io memory pids", "")):
        (cg / "cgroup.controllers").write_text(controllers + "\n")
        (cg / "cgroup.subtree_control").write_text(enabled + "\n")
    cgroups.prepare_parent(tmp_path, "kata-py")
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (parent / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    # a create below it then writes no subtree_control (cgroup files are
    # written in place; here a rewrite would show as a changed file)
    (tmp_path / "cgroup.subtree_control").write_text("cpu io memory pids\n")
    (parent / "cgroup.subtree_control").write_text("cpu memory pids\n")
    path = cgroups.create(Cgroup("kata-py/c1", root=str(tmp_path)))
    assert path == parent / "c1" and path.is_dir()
    assert (parent / "cgroup.subtree_control").read_text() == "cpu memory pids\n"


def test_cgroup_limits_are_written(cgroup2: Path) -> None:
    available = set((cgroup2 / "cgroup.controllers").read_text().split())
    if not {"memory", "pids", "cpu"} <= available:
        pytest.skip(f"cgroup2 controllers here are {sorted(available)} (hybrid host: "
                    "memory/cpu/pids are bound to v1); limits are covered by "
                    "test_resources_map_onto_cgroup_v2_files")
    res = Resources(memory_limit=64 << 20, pids_limit=50, cpu_shares=512)
    path = cgroups.create(Cgroup(f"kata-py-test-{os.getpid()}-limits", res, str(cgroup2)))
    try:
        cgroups.apply(path, res)
        assert (path / "memory.max").read_text().strip() == str(64 << 20)
        assert (path / "pids.max").read_text().strip() == "50"
    finally:
        cgroups.remove(path)


# --- user namespaces ----------------------------------------------------------------

USERNS_MAPS = {"uid_mappings": (launch_config.IdMapping(0, 100000, 65536),),
               "gid_mappings": (launch_config.IdMapping(0, 200000, 65536),)}


def test_a_new_user_namespace_maps_the_containers_ids_and_owns_its_namespaces(
        reachable_rootfs: Path) -> None:
    """runc's nsexec order: the parent writes the child's maps, the child is
    root inside and makes the other namespaces there (so its mounts, hostname
    and devices work as the namespace's root), files it makes belong to the
    mapped ids outside."""
    (reachable_rootfs / "tmp").chmod(0o1777)
    script = ("cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g; hostname inner; "
              "hostname; echo x > /tmp/made; echo $$")
    result = run_sh(reachable_rootfs, script, namespaces=(Namespace("user"), *ALL_NAMESPACES),
                    mounts=tuple(m for m in DEFAULT_MOUNTS if m.destination != "/tmp"),
                    **USERNS_MAPS)
    lines = [line.split() for line in result.stdout.splitlines()]
    assert lines[:2] == [["0", "100000", "65536"], ["0", "200000", "65536"]]
    assert lines[2:6] == [["0"], ["0"], ["inner"], ["1"]]       # root inside, pid 1
    made = reachable_rootfs / "tmp" / "made"
    assert (made.stat().st_uid, made.stat().st_gid) == (100000, 200000)


def test_without_a_pid_namespace_the_user_namespace_child_is_the_container(
        reachable_rootfs: Path) -> None:
    # no new proc: that takes a pid namespace the user namespace owns
    dev = tuple(m for m in DEFAULT_MOUNTS if m.destination == "/dev")
    (reachable_rootfs / "tmp").chmod(0o1777)
    result = run_sh(reachable_rootfs, "touch /tmp/made; echo $$", mounts=dev,
                    namespaces=(Namespace("user"), Namespace("mount")), **USERNS_MAPS)
    pid = result.stdout.strip()
    assert (reachable_rootfs / "tmp" / "made").stat().st_uid == 100000
    created = [line["created"] for line in result.sync if "created" in line]
    assert created == [int(pid)]                 # the pid the agent tracks is the container


def test_a_map_the_kernel_refuses_is_one_error_naming_the_map(reachable_rootfs: Path) -> None:
    overlapping = (launch_config.IdMapping(0, 100000, 10), launch_config.IdMapping(5, 300000, 10))
    result = launch(make_config(reachable_rootfs, ("true",), namespaces=(Namespace("user"),),
                                uid_mappings=overlapping,
                                gid_mappings=USERNS_MAPS["gid_mappings"]))
    errors = [line["error"] for line in result.sync if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("linux.uidMappings: write /proc/"), errors
    assert result.returncode != 0


def test_mount_points_a_user_namespace_could_not_make_are_made_before_it(
        reachable_rootfs: Path) -> None:
    """The rootfs belongs to ids outside the namespace (here: the host's
    root), so its root may not mkdir there; the launcher makes the missing
    mount points before it enters the namespace (below another mount: later)."""
    mounts = (*DEFAULT_MOUNTS, Mount("/newdir", "tmpfs", "tmpfs", ()),
              Mount("/newdir/inner", "tmpfs", "tmpfs", ()))
    result = run_sh(reachable_rootfs, "grep -c ' /newdir' /proc/self/mountinfo",
                    namespaces=(Namespace("user"), *ALL_NAMESPACES), mounts=mounts,
                    **USERNS_MAPS)
    assert result.stdout.split() == ["2"]
    assert (reachable_rootfs / "newdir").is_dir()
    assert not (reachable_rootfs / "newdir" / "inner").exists()   # made inside the tmpfs
