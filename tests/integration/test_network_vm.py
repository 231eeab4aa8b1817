"""Container networking through a real micro-VM, driven by the CLI: the
container's network namespace (given by path in config.json, as netavark
makes it) is a veth into a "server" namespace where a tiny HTTP server
runs; the container fetches a file from it with busybox wget. Without a
network namespace path the VM has no NIC at all. Afterwards nothing is
left: no process, mount or state, and no tap or ingress qdisc."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import secrets
import select
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kata_py.config import RuntimeConfig
from kata_py.sandbox import Sandbox
from kata_py.spec_default import default_spec

from .conftest import busybox_rootfs, kp
from .netns import VethPair, ip, leftover_devices, veth_pair

pytestmark = pytest.mark.vm

RUN_TIMEOUT_S = 240
SERVER_START_S = 20
HTTP_PORT = 8213
BIG_FILE_BYTES = 8 << 20


def _bundle(directory: Path, script: str, netns: Path | None,
            mounts: tuple[dict[str, Any], ...] = ()) -> Path:
    busybox_rootfs(directory / "rootfs")
    spec = default_spec()
    spec["process"].update(terminal=False, args=["sh", "-c", script])
    for kind in ("bounding", "effective", "permitted"):
        spec["process"]["capabilities"][kind].append("CAP_NET_RAW")  # for ping
    namespaces = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "network"]
    if netns is not None:
        namespaces.append({"type": "network", "path": str(netns)})
    spec["linux"]["namespaces"] = namespaces
    spec["mounts"] += list(mounts)
    (directory / "config.json").write_text(json.dumps(spec))
    return directory


@contextmanager
def http_server(pair: VethPair, directory: Path) -> Iterator[str]:
    """python -m http.server in the server namespace; yields its base URL."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", pair.server, sys.executable, "-u", "-m", "http.server",
         "--bind", pair.server_ip, "--directory", str(directory), str(HTTP_PORT)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], SERVER_START_S)
        line = proc.stdout.readline() if ready else b""
        assert b"Serving HTTP" in line, f"http.server did not start: {line!r}"
        yield f"http://{pair.server_ip}:{HTTP_PORT}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_container_fetches_a_file_over_http_through_the_vm_nic(
        root: Path, tmp_path: Path) -> None:
    token = secrets.token_hex(8)
    served = tmp_path / "www"
    served.mkdir()
    (served / "hello.txt").write_text(f"hello {token}\n")
    big = os.urandom(BIG_FILE_BYTES)  # segmentation/checksum offloads, and a throughput
    (served / "big.bin").write_bytes(big)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.213.5.1\nsearch kata-py.test\n")
    with veth_pair("vmhttp", 5) as pair, http_server(pair, served) as url:
        script = (f"wget -q -O - {url}/hello.txt; echo rc=$?; cat /etc/resolv.conf; "
                  "ip -o addr show eth0; cat /sys/class/net/eth0/mtu; ip route; "
                  f"ping -c 3 {pair.server_ip}; "
                  "time sh -c 'for i in 1 2 3 4 5; do "
                  f"wget -q -O /dev/null {url}/hello.txt; done'; "
                  f"time wget -q -O - {url}/big.bin | md5sum")
        bundle = _bundle(tmp_path / "b", script, pair.container_path, mounts=(
            {"destination": "/etc/resolv.conf", "type": "bind", "source": str(resolv),
             "options": ["bind", "ro"]},))
        r = kp(root, "run", "-b", str(bundle), "net-http")
        out, err = r.stdout.decode(), r.stderr.decode()
        print(out, err)  # the ping and wget timings, for the record
        assert r.returncode == 0, err
        assert f"hello {token}\nrc=0\n" in out
        assert "nameserver 10.213.5.1\nsearch kata-py.test\n" in out  # the bind mount
        assert f"inet {pair.container_ip}/24" in out and f"inet6 {pair.container_ip6}/64" in out
        assert f"\n{pair.mtu}\n" in out
        assert f"default via {pair.server_ip} dev eth0" in out
        assert re.search(r"3 packets transmitted, 3 packets received", out), out
        assert f"{hashlib.md5(big).hexdigest()}  -" in out
        assert leftover_devices(pair) == []


def test_container_without_a_network_namespace_path_sees_only_lo(
        root: Path, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "b", "ls /sys/class/net", netns=None)
    r = kp(root, "run", "-b", str(bundle), "net-none")
    assert (r.returncode, r.stdout) == (0, b"lo\n"), r.stderr


def test_q35_guest_answers_ping_from_the_server_through_a_pci_nic(
        sandboxes: Callable[..., Sandbox], runtime_config: RuntimeConfig) -> None:
    """The guest itself (no container) owns the address: the server pings it."""
    q35 = dataclasses.replace(runtime_config, hypervisor=dataclasses.replace(
        runtime_config.hypervisor, machine="q35"))
    with veth_pair("vmq35", 6) as pair:
        sb = sandboxes(q35, netns=pair.container_path)
        sb.start()
        ip("addr", "add", f"{pair.container_ip6[:-1]}1/64", "dev", "veth-srv", "nodad",
           netns=pair.server)
        for address in (pair.container_ip, pair.container_ip6):
            ping = subprocess.run(["ip", "netns", "exec", pair.server, "busybox", "ping", "-c",
                                   "5", "-i", "0.2", "-W", "5", address], capture_output=True,
                                  text=True, timeout=60)
            print(ping.stdout)  # round trips, for the record
            assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
        sb.stop()
        assert leftover_devices(pair) == []
