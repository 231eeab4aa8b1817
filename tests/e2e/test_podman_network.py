"""podman's default network (netavark bridge) through kata-py's tcfilter
mirroring: traffic out of the VM to a server the test runs in its own
network namespace, a published port into the VM, podman's DNS files inside,
and nothing of the network left after `rm`.

Every address is one the test assigns (10.214.N.0/30) or podman's own
bridge; every request is bounded in count and time.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import IMAGE, Podman

pytestmark = pytest.mark.vm

SERVER_PORT = 8081
REQUEST_TIMEOUT_S = 60.0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


@dataclass(frozen=True)
class Server:
    address: str
    port: int
    body: str


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """An HTTP server in a namespace of our own, joined to the host by a veth."""
    tag = os.getpid() % 10000
    ns, host_if, ns_if = f"kpn-srv-{tag}", f"kph{tag}", f"kpv{tag}"
    net = f"10.214.{tag % 250}"
    (tmp_path / "hello.txt").write_text(f"hello from {ns}\n")
    proc: subprocess.Popen[bytes] | None = None
    try:
        _ip("netns", "add", ns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        _ip("addr", "add", f"{net}.1/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "addr", "add", f"{net}.2/30", "dev", ns_if)
        _ip("-n", ns, "link", "set", ns_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "route", "add", "default", "via", f"{net}.1")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", str(SERVER_PORT),
             "--bind", f"{net}.2", "--directory", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://{net}.2:{SERVER_PORT}/hello.txt"
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - our own server
                    r.read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield Server(f"{net}.2", SERVER_PORT, f"hello from {ns}\n")
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(timeout=30)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def test_a_container_reaches_a_server_in_a_namespace_of_the_test(podman: Podman,
                                                                 server: Server) -> None:
    before = _netns()
    out = podman.ok("run", "--rm", IMAGE, "sh", "-c",
                    f"timeout 20 wget -q -O - http://{server.address}:{server.port}/hello.txt; "
                    "ip -o -4 addr show eth0 | awk '{print $4}'; cat /sys/class/net/eth0/mtu")
    body, address, mtu = (out.split("\n") + ["", ""])[:3]
    assert body + "\n" == server.body, out
    assert address.startswith("10.88."), out             # podman's default bridge
    assert mtu == "1500", out
    assert _netns() - before == set()                     # podman's netns went with the container


def test_a_published_port_reaches_a_server_in_the_vm(podman: Podman) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    podman.ok("run", "-d", "--name", "web", "-p", f"127.0.0.1:{port}:8080", IMAGE, "sh", "-c",
              "mkdir -p /www && echo published from $(hostname) > /www/index.html && "
              "exec httpd -f -p 8080 -h /www")
    hostname = podman.ok("inspect", "--format", "{{.Config.Hostname}}", "web").strip()
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html",  # noqa: S310
                                        timeout=5) as r:
                body = r.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert body == f"published from {hostname}\n"


def test_dns_files_and_address_inside_match_podmans(podman: Podman) -> None:
    podman.ok("run", "-d", "--name", "dns", IMAGE, "sleep", "600")
    info = json.loads(podman.ok("inspect", "dns"))[0]
    inside = podman.ok("exec", "dns", "sh", "-c",
                       "cat /etc/resolv.conf; echo ---; cat /etc/hosts; echo ---; "
                       "cat /etc/hostname; echo ---; ip -o -4 addr show eth0")
    resolv, hosts, hostname, addr = inside.split("---\n")
    assert resolv == Path(info["ResolvConfPath"]).read_text()
    assert hosts == Path(info["HostsPath"]).read_text()
    assert hostname == Path(info["HostnamePath"]).read_text()
    ip = info["NetworkSettings"]["IPAddress"]
    assert f" {ip}/" in addr, (ip, addr)


def test_network_none_gives_only_lo_and_nothing_is_left(podman: Podman) -> None:
    before = _netns()
    out = podman.ok("run", "--rm", "--network", "none", IMAGE, "ls", "/sys/class/net")
    assert out.split() == ["lo"]
    assert _netns() - before == set()
