"""kata_py.network against the real kernel, without a VM: taps, ingress
qdiscs and mirred filters in a network namespace the test makes (a veth
pair between a "server" and a "container" namespace), frames through the
redirect both ways, and nothing left behind — after teardown and after
every failure."""

from __future__ import annotations

import dataclasses
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kata_py import network
from kata_py.config import RuntimeConfig
from kata_py.errors import HypervisorError, ResourceError
from kata_py.hypervisor import qemu
from kata_py.sandbox import Sandbox

from .conftest import leftovers
from .netns import VethPair, ip, leftover_devices, tc, veth_pair

VNET_HDR_BYTES = 10          # struct virtio_net_hdr, the tap's default
FRAME_WAIT_S = 5.0


@pytest.fixture
def pair(request: pytest.FixtureRequest) -> Iterator[VethPair]:
    subnet = 10 + len(request.node.name) % 40
    with veth_pair(request.node.name[5:15].replace("_", ""), subnet) as p:
        yield p


def test_setup_mirrors_the_veth_into_a_tap_and_teardown_removes_it(pair: VethPair) -> None:
    net = network.setup(pair.container_path)
    try:
        assert net.endpoints == (network.Endpoint("eth0", "tap0_kp"),)
        assert len(net.tap_fds) == 1
        tap = ip("-d", "link", "show", "tap0_kp", netns=pair.container)
        assert f"mtu {pair.mtu}" in tap and ",UP" in tap and "tun type tap" in tap
        for dev, peer in (("eth0", "tap0_kp"), ("tap0_kp", "eth0")):
            assert "qdisc ingress ffff:" in tc(pair.container, "qdisc", "show", "dev", dev)
            filters = tc(pair.container, "filter", "show", "dev", dev, "ingress")
            assert "u32" in filters and "match 00000000/00000000 at 0" in filters
            assert f"mirred (Egress Redirect to device {peer}) stolen" in filters
        assert net.interfaces == (network.Interface(
            "eth0", pair.container_mac(), pair.mtu,
            (network.IPAddress(pair.container_ip, 24),
             network.IPAddress(pair.container_ip6, 64))),)
        assert net.routes == (network.Route("0.0.0.0/0", "eth0", pair.server_ip),)
    finally:
        net.close_fds()
        network.teardown(net)
    assert leftover_devices(pair) == []
    network.teardown(net)  # idempotent


def _arp_request(mac: bytes, sender: str, target: str) -> bytes:
    return (b"\xff" * 6 + mac + b"\x08\x06" + struct.pack(
        "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, socket.inet_aton(sender), b"\0" * 6,
        socket.inet_aton(target)))


def _read_arp_reply(fd: int, sender: str) -> bytes:
    deadline = time.monotonic() + FRAME_WAIT_S
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            break
        frame = os.read(fd, 65536)[VNET_HDR_BYTES:]
        if frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x02" \
                and frame[28:32] == socket.inet_aton(sender):
            return frame
    raise AssertionError(f"no ARP reply from {sender} came out of the tap")


def test_frames_cross_the_redirect_both_ways(pair: VethPair) -> None:
    """An ARP request written into the tap (as the guest would) leaves by the
    veth to the server; the server's reply comes back out of the tap."""
    net = network.setup(pair.container_path)
    try:
        mac = bytes.fromhex(net.interfaces[0].mac.replace(":", ""))
        request = _arp_request(mac, pair.container_ip, pair.server_ip)
        os.write(net.tap_fds[0], b"\0" * VNET_HDR_BYTES + request)
        reply = _read_arp_reply(net.tap_fds[0], pair.server_ip)
        assert reply[:6] == mac  # addressed to the guest's NIC (the veth's MAC)
    finally:
        net.close_fds()
        network.teardown(net)
    assert leftover_devices(pair) == []


def test_a_setup_failing_after_the_filters_leaves_nothing(pair: VethPair,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    real = network._mirror

    def mirror_then_fail(ipr: object, veth: network.Link, tap: str) -> None:
        real(ipr, veth, tap)
        raise OSError(28, "injected failure")

    monkeypatch.setattr(network, "_mirror", mirror_then_fail)
    with pytest.raises(ResourceError, match="injected failure"):
        network.setup(pair.container_path)
    assert leftover_devices(pair) == []


def test_a_veth_with_an_ingress_qdisc_is_refused_and_its_qdisc_kept(pair: VethPair) -> None:
    tc(pair.container, "qdisc", "add", "dev", "eth0", "ingress")
    with pytest.raises(ResourceError, match="eth0 already has an ingress qdisc"):
        network.setup(pair.container_path)
    assert "ingress" in tc(pair.container, "qdisc", "show", "dev", "eth0")
    assert "_kp" not in ip("-br", "link", netns=pair.container)


def test_missing_namespace_fails_and_teardown_of_a_deleted_one_is_quiet(pair: VethPair
                                                                        ) -> None:
    with pytest.raises(ResourceError, match="does not exist"):
        network.setup(Path("/run/netns/kp-no-such-netns"))
    net = network.setup(pair.container_path)
    net.close_fds()
    ip("netns", "del", pair.container)
    network.teardown(net)
    ip("netns", "add", pair.container)  # for the fixture to delete


def test_interfaces_that_are_down_get_no_tap(pair: VethPair) -> None:
    ip("link", "set", "eth0", "down", netns=pair.container)
    net = network.setup(pair.container_path)
    assert (net.endpoints, net.interfaces, net.tap_fds) == ((), (), [])


@pytest.mark.parametrize("template", [False, True])
def test_sandbox_failing_at_qemu_launch_removes_its_taps(
        pair: VethPair, runtime_config: RuntimeConfig, monkeypatch: pytest.MonkeyPatch,
        template: bool) -> None:
    """A start that fails after the network is set up tears it down too (booting
    the VM, whose QEMU gets the taps; or restoring it, or building its template)."""
    seen: list[qemu.VmConfig] = []

    def launch(cfg: qemu.VmConfig, log_path: Path, on_start: object = None) -> None:
        seen.append(cfg)
        raise HypervisorError("injected QEMU failure")

    monkeypatch.setattr(qemu, "launch", launch)
    cfg = dataclasses.replace(runtime_config, hypervisor=dataclasses.replace(
        runtime_config.hypervisor, accelerator="tcg"), factory=dataclasses.replace(
        runtime_config.factory, template=template))
    sb = Sandbox("net-fail", cfg, netns=pair.container_path)
    with pytest.raises(HypervisorError, match="injected"):
        sb.start()
    assert [n.mac for n in seen[0].nics] == ([] if template else [pair.container_mac()])
    assert leftover_devices(pair) == []
    assert not sb.dir.exists() and leftovers(str(sb.dir)) == []


GUEST_SCRIPT = """
import sys
from kata_py.agent import network as g
g.NIC_WAIT_S = 0.5
nics = [g.Interface("eth0", "02:00:00:00:00:0a", 1280, (("10.213.77.2", 24), ("fd00:77::2", 64))),
        g.Interface("eth1", "02:00:00:00:00:0b", 1500, (("10.213.78.2", 24),))]
routes = [g.Route("0.0.0.0/0", "10.213.77.1", "eth0"), g.Route("10.99.0.0/16", "", "eth1"),
          g.Route("::/0", "fd00:77::1", "eth0")]
for _ in range(2):  # a repeated request changes nothing
    g.configure(nics, routes)
try:
    g.configure([g.Interface("eth9", "02:00:00:00:00:99", 1500)], [])
except g.NotFound as exc:
    print("not found:", exc)
"""


def test_guest_side_configuration_applies_through_rtnetlink() -> None:
    """kata_py.agent.network against the real kernel in a namespace whose NICs
    (veths) carry each other's names: renamed by MAC, addressed, routed."""
    name = f"kp-{os.getpid()}-guestcfg"
    ip("netns", "add", name)
    try:
        for dev, mac, peer in (("eth1", "0a", "p1"), ("eth0", "0b", "p0")):
            ip("link", "add", dev, "address", f"02:00:00:00:00:{mac}", "type", "veth", "peer",
               "name", peer, netns=name)
        out = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", GUEST_SCRIPT],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "not found: no guest NIC with MAC 02:00:00:00:00:99" in out.stdout
        eth0 = ip("addr", "show", "eth0", netns=name)
        assert "02:00:00:00:00:0a" in eth0 and "mtu 1280" in eth0 and ",UP" in eth0
        assert "inet 10.213.77.2/24 brd 10.213.77.255" in eth0 and "inet6 fd00:77::2/64" in eth0
        assert "inet 10.213.78.2/24" in ip("addr", "show", "eth1", netns=name)
        assert ",UP" in ip("link", "show", "lo", netns=name)
        v4 = ip("route", "show", netns=name)
        assert "default via 10.213.77.1 dev eth0 proto static" in v4
        assert "10.99.0.0/16 dev eth1 proto static scope link" in v4
        assert "default via fd00:77::1 dev eth0 proto static" in ip("-6", "route", netns=name)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
