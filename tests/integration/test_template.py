"""VM templates end to end (kata_py/factory.py), with real QEMU under TCG:
a private template directory per test, so each one builds its own template."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from kata_py.spec_default import default_spec

from .conftest import CLI_TIMEOUT_S, busybox_rootfs, cli_argv, kp

PROBE = ("echo clock $(date +%s); echo random $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' ');"
         " cat /etc/marker")


def _bundle(path: Path, *args: str) -> Path:
    rootfs = busybox_rootfs(path / "rootfs")
    for applet in ("date", "head", "od", "tr"):
        os.symlink("busybox", rootfs / "bin" / applet)
    (rootfs / "etc" / "marker").write_text("from the host, through virtio-fs\n")
    spec = default_spec()
    spec["process"].update(terminal=False, args=list(args))
    (path / "config.json").write_text(json.dumps(spec))
    return path


def _config(tmp_path: Path, template: bool = True) -> Path:
    config = tmp_path / "kata-py.toml"
    config.write_text(f'[factory]\ntemplate = {"true" if template else "false"}\n'
                      f'template_dir = "{tmp_path / "templates"}"\n')
    return config


def _facts(out: bytes) -> dict[str, str]:
    lines = out.decode().splitlines()
    facts = {ln.split()[0]: ln.split()[1] for ln in lines if ln.startswith(("clock ", "random "))}
    facts["marker"] = lines[-1]
    return facts


def test_clones_run_with_the_hosts_clock_their_own_entropy_and_the_share(
        root: Path, tmp_path: Path) -> None:
    """Two sandboxes started at once with no template: one create builds it (the
    other waits on the lock), both are restored from it. Each clone's clock is
    the host's, not the template's, and their kernel RNGs differ."""
    config = _config(tmp_path)
    bundle = _bundle(tmp_path / "b", "sh", "-c", PROBE)
    procs = [subprocess.Popen(cli_argv(root, "--debug", "--config", str(config), "run", "-b",
                                       str(bundle), f"clone{i}"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(2)]
    results = [p.communicate(timeout=CLI_TIMEOUT_S) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err.decode()[-3000:]
    templates = [d for d in (tmp_path / "templates").iterdir() if not d.name.startswith(".")]
    assert len(templates) == 1 and (templates[0] / "memory").is_file()
    logs = b"".join(err for _, err in results).decode()
    assert logs.count("VM template") >= 1 and logs.count(" built in ") == 1, logs[-3000:]
    assert logs.count(f"restored from template {templates[0].name}") == 2, logs[-3000:]
    facts = [_facts(out) for out, _ in results]
    for f in facts:
        assert abs(int(f["clock"]) - time.time()) < 30, f
        assert f["marker"] == "from the host, through virtio-fs"
    assert facts[0]["random"] != facts[1]["random"]
    # The template was saved before either ran: its clock is older than theirs.
    saved = json.loads((templates[0] / "template.json").read_text())["created"]
    assert saved < min(int(f["clock"]) for f in facts) + 1


def test_a_template_that_cannot_be_restored_is_discarded_then_rebuilt(
        root: Path, tmp_path: Path) -> None:
    config = _config(tmp_path)
    bundle = _bundle(tmp_path / "b", "sh", "-c", PROBE)
    assert kp(root, "--config", str(config), "run", "-b", str(bundle), "first").returncode == 0
    (tpl,) = [d for d in (tmp_path / "templates").iterdir() if not d.name.startswith(".")]
    (tpl / "state").write_bytes(b"QEVM not a saved VM")
    r = kp(root, "--config", str(config), "run", "-b", str(bundle), "broken")
    assert r.returncode != 0
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kata-py: "), r.stderr
    assert "restor" in lines[0], lines[0]
    assert not tpl.exists()                      # discarded: the next create rebuilds it
    assert not (root / "vm" / "broken").exists()
    r = kp(root, "--config", str(config), "run", "-b", str(bundle), "rebuilt")
    assert r.returncode == 0, r.stderr
    assert _facts(r.stdout)["marker"] == "from the host, through virtio-fs"
    assert (tpl / "state").stat().st_size > 1000


def test_without_templates_every_sandbox_boots_its_own_vm(root: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, template=False)
    bundle = _bundle(tmp_path / "b", "sh", "-c", PROBE)
    r = kp(root, "--debug", "--config", str(config), "run", "-b", str(bundle), "cold")
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert b"(tcg, booted)" in r.stderr or b"(kvm, booted)" in r.stderr
    assert _facts(r.stdout)["marker"] == "from the host, through virtio-fs"
    assert not (tmp_path / "templates").exists()
