"""Network namespaces for tests: a "server" and a "container" namespace
joined by a veth pair, named after the test process (`kp-<pid>-<tag>-…`),
always deleted afterwards, made with ip(8) so the code under test does not
build its own fixture."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

IP_TIMEOUT_S = 10


def ip(*args: str, netns: str = "") -> str:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True,
                          timeout=IP_TIMEOUT_S).stdout


def tc(netns: str, *args: str) -> str:
    return subprocess.run(["tc", "-n", netns, *args], check=True, capture_output=True,
                          text=True, timeout=IP_TIMEOUT_S).stdout


@dataclass(frozen=True)
class VethPair:
    server: str             # netns names
    container: str
    server_ip: str
    container_ip: str
    container_ip6: str
    mtu: int

    @property
    def container_path(self) -> Path:
        return Path("/run/netns") / self.container

    def container_mac(self) -> str:
        return ip("-br", "link", "show", "eth0", netns=self.container).split()[2]


@contextmanager
def veth_pair(tag: str, subnet: int, mtu: int = 1400) -> Iterator[VethPair]:
    """server netns: veth-srv 10.213.<subnet>.1/24; container netns: eth0
    10.213.<subnet>.2/24 + fd00:213:<subnet>::2/64, default route via .1."""
    base = f"kp-{os.getpid()}-{tag}"
    pair = VethPair(f"{base}-s", f"{base}-c", f"10.213.{subnet}.1", f"10.213.{subnet}.2",
                    f"fd00:213:{subnet}::2", mtu)
    made: list[str] = []
    try:
        for name in (pair.server, pair.container):
            ip("netns", "add", name)
            made.append(name)
        ip("link", "add", "eth0", "mtu", str(mtu), "type", "veth", "peer", "name", "veth-srv",
           "mtu", str(mtu), "netns", pair.server, netns=pair.container)
        ip("addr", "add", f"{pair.container_ip}/24", "dev", "eth0", netns=pair.container)
        ip("addr", "add", f"{pair.container_ip6}/64", "dev", "eth0", "nodad",
           netns=pair.container)
        ip("link", "set", "eth0", "up", netns=pair.container)
        ip("route", "add", "default", "via", pair.server_ip, netns=pair.container)
        ip("addr", "add", f"{pair.server_ip}/24", "dev", "veth-srv", netns=pair.server)
        ip("link", "set", "veth-srv", "up", netns=pair.server)
        ip("link", "set", "lo", "up", netns=pair.server)
        yield pair
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True,
                           timeout=IP_TIMEOUT_S)


def leftover_devices(pair: VethPair) -> list[str]:
    """Taps and ingress qdiscs of kata-py still in the container namespace."""
    found = [line for line in ip("-br", "link", netns=pair.container).splitlines()
             if "_kp" in line.split()[0]]
    found += [line for line in tc(pair.container, "qdisc", "show").splitlines()
              if "ingress" in line]
    return found
