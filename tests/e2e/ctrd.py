"""A private containerd for the end-to-end tests: its own config, root,
state and sockets under a temporary directory (the host's containerd, if
any, is never touched), `ctr` bound to it, and the busybox image imported
from a locally built OCI archive — no registry."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from .conftest import CACHE, busybox_tar

IMAGE = "localhost/busybox:latest"
RUNTIME = "io.containerd.kata-py.v2"
NAMESPACE = "kp"
START_TIMEOUT_S = 30.0
CTR_TIMEOUT_S = 180.0
REPO = Path(__file__).resolve().parents[2]


def oci_archive() -> Path:
    """An OCI image archive of busybox_tar() (one uncompressed layer), cached."""
    layer = busybox_tar().read_bytes()
    layer_digest = hashlib.sha256(layer).hexdigest()
    path = CACHE / f"busybox-oci-{layer_digest[:12]}.tar"
    if path.exists():
        return path
    blobs: dict[str, bytes] = {layer_digest: layer}

    def blob(data: bytes, media_type: str) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(config, "application/vnd.oci.image.config.v1+json"),
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": f"sha256:{layer_digest}", "size": len(layer)}]}).encode()
    descriptor = blob(manifest, "application/vnd.oci.image.manifest.v1+json")
    descriptor["annotations"] = {"io.containerd.image.name": IMAGE,
                                 "org.opencontainers.image.ref.name": "latest"}
    index = json.dumps({"schemaVersion": 2, "manifests": [descriptor]}).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tarfile.open(tmp, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", index)
        for digest, data in blobs.items():
            add(f"blobs/sha256/{digest}", data)
    os.replace(tmp, path)
    return path


@dataclass
class Containerd:
    base: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str]

    @property
    def address(self) -> str:
        return str(self.base / "c.sock")

    def ctr(self, *args: str, input: bytes | None = None, timeout: float = CTR_TIMEOUT_S
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ctr", "--address", self.address, "--namespace", NAMESPACE,
                               *args], input=None if input is None else input.decode(),
                              capture_output=True, text=True, timeout=timeout,
                              env=self.env, check=False, stdin=None
                              if input is not None else subprocess.DEVNULL)

    def ok(self, *args: str) -> str:
        r = self.ctr(*args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r.stdout

    def log(self) -> str:
        return (self.base / "containerd.log").read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.ctr("version", timeout=10).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"containerd did not start:\n{self.log()[-3000:]}")
            time.sleep(0.2)

    def restart(self) -> None:
        """Stop containerd (its shims go on) and start it again on the same state."""
        self.stop()
        self.process = _spawn(self.base, self.env)
        self.wait_ready()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_containerd(base: Path, shim_command: str = f"{REPO}/.venv/bin/python3 -m kata_py.shimv2"
                     ) -> Containerd:
    """containerd with the CRI plugin off, the shim found on PATH (a wrapper
    in base/bin running shim_command: by default this checkout's), logs in
    base/containerd.log."""
    bin_dir = base / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "containerd-shim-kata-py-v2"
    shim.write_text(f'#!/bin/sh\nexec {shim_command} "$@"\n')
    shim.chmod(0o755)
    (base / "config.toml").write_text(
        'version = 2\n'
        f'root = "{base}/root"\nstate = "{base}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{base}/c.sock"\n'
        f'[ttrpc]\n  address = "{base}/c.sock.ttrpc"\n'
        '[debug]\n  level = "info"\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    ctrd = Containerd(base, _spawn(base, env), env)
    ctrd.wait_ready()
    ctrd.ok("images", "import", str(oci_archive()))
    return ctrd


def _spawn(base: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(base / "containerd.log", "ab") as log:
        return subprocess.Popen(["containerd", "--config", str(base / "config.toml")],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                start_new_session=True)


def remove(base: Path) -> None:
    shutil.rmtree(base, ignore_errors=True)
