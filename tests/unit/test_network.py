"""Networking without a kernel: what the host tells the guest (from
pyroute2-like data), the guest's rtnetlink encoding, and the RPC's refusal
of a bad request."""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from kata_py import network as host
from kata_py.agent import network as guest
from kata_py.agent.errors import InvalidArgument
from kata_py.agent.server import AgentServer
from kata_py.agent_client import AgentClient
from kata_py.errors import AgentError
from kata_py.spec import Spec, parse_spec
from kata_py.translate import GUEST_SHARE, to_launch_config

FIXTURE = Path(__file__).parent / "fixtures" / "spec" / "podman.json"
UP, LOOPBACK = 0x1, 0x8
V4, V6 = socket.AF_INET, socket.AF_INET6


def _podman(tmp_path: Path) -> Spec:
    data = json.loads(FIXTURE.read_text())
    (tmp_path / "rootfs").mkdir()
    data["root"]["path"] = "rootfs"
    return parse_spec(data, tmp_path)


# -- host: what the guest is told -------------------------------------------

def test_network_namespace_path_comes_from_the_spec(tmp_path: Path) -> None:
    spec = _podman(tmp_path)
    assert host.netns_path(spec) == Path("/run/netns/netns-5c1f0e3a-2b7d-9e4f-8a6c-1d2e3f4a5b6c")


def test_podman_dns_files_reach_the_container_as_bind_mounts_from_the_share(
        tmp_path: Path) -> None:
    config, shares = to_launch_config(_podman(tmp_path), "c1")
    for name in ("resolv.conf", "hosts", "hostname"):
        mount = next(m for m in config.mounts if m.destination == f"/etc/{name}")
        share = next(s for s in shares if s.source.name == name)
        assert (mount.type, mount.source) == ("bind", f"{GUEST_SHARE}/{share.target}")


LINKS = [
    host.Link(1, "lo", "00:00:00:00:00:00", 65536, UP | LOOPBACK),
    host.Link(2, "eth0", "aa:bb:cc:00:00:02", 1400, UP),
    host.Link(3, "eth1", "aa:bb:cc:00:00:03", 1500, 0),          # down
    host.Link(4, "tap0_kp", "aa:bb:cc:00:00:04", 1400, UP),      # ours
    host.Link(5, "gre0", "", 1476, UP),                          # no MAC
]


def test_mirrored_links_are_up_with_a_mac_and_neither_loopback_nor_our_taps() -> None:
    assert [link.name for link in host.mirrored_links(LINKS)] == ["eth0"]


def test_description_keeps_addresses_but_ipv6_link_local_and_routes_but_kernel_made() -> None:
    eth0 = [LINKS[1]]
    addrs = [host.Addr(2, V4, "10.88.0.5", 16), host.Addr(2, V6, "fd00::5", 64),
             host.Addr(2, V6, "fe80::a8bb:ccff:fe00:2", 64), host.Addr(1, V4, "127.0.0.1", 8)]
    kernel, boot, static = 2, 3, 4
    routes = [
        host.RouteEntry(V4, "", 0, "10.88.0.1", 2, "", 254, boot, 1),         # default
        host.RouteEntry(V4, "10.88.0.0", 16, "", 2, "10.88.0.5", 254, kernel, 1),
        host.RouteEntry(V4, "10.99.0.0", 16, "", 2, "", 254, static, 1),      # on-link
        host.RouteEntry(V4, "10.88.0.5", 32, "", 2, "", 255, kernel, 2),      # local table
        host.RouteEntry(V6, "fe80::", 64, "", 2, "", 254, kernel, 1),
        host.RouteEntry(V6, "", 0, "fd00::1", 2, "", 254, static, 1),
        host.RouteEntry(V4, "192.168.0.0", 24, "", 9, "", 254, static, 1),    # other link
        host.RouteEntry(V4, "10.1.0.0", 16, "", 2, "", 254, static, 6),      # blackhole
    ]
    interfaces, out = host.describe(eth0, addrs, routes)
    assert interfaces == (host.Interface("eth0", "aa:bb:cc:00:00:02", 1400, (
        host.IPAddress("10.88.0.5", 16), host.IPAddress("fd00::5", 64))),)
    assert out == (host.Route("10.99.0.0/16", "eth0"),
                   host.Route("0.0.0.0/0", "eth0", "10.88.0.1"),
                   host.Route("::/0", "eth0", "fd00::1"))


def test_pyroute2_messages_become_links_addresses_and_routes() -> None:
    link = ifinfmsg()
    link["index"], link["flags"] = 2, UP
    link["attrs"] = [("IFLA_IFNAME", "eth0"), ("IFLA_ADDRESS", "AA:BB:CC:00:00:02"),
                     ("IFLA_MTU", 1400)]
    assert host.link_from_msg(link) == host.Link(2, "eth0", "aa:bb:cc:00:00:02", 1400, UP)
    addr = ifaddrmsg()
    addr["index"], addr["family"], addr["prefixlen"] = 2, V4, 32
    addr["attrs"] = [("IFA_ADDRESS", "10.0.0.1"), ("IFA_LOCAL", "10.0.0.5")]  # point-to-point
    assert host.addr_from_msg(addr) == host.Addr(2, V4, "10.0.0.5", 32)
    route = rtmsg()
    route["family"], route["table"], route["proto"], route["type"] = V4, 254, 3, 1
    route["attrs"] = [("RTA_GATEWAY", "10.0.0.1"), ("RTA_OIF", 2)]
    assert host.route_from_msg(route) == host.RouteEntry(V4, "", 0, "10.0.0.1", 2, "", 254,
                                                         3, 1)


def test_sandbox_network_state_round_trips_through_json() -> None:
    net = host.SandboxNetwork(Path("/run/netns/x"), (host.Endpoint("eth0", "tap0_kp"),),
                              tap_fds=[7])
    back = host.SandboxNetwork.from_json(json.loads(json.dumps(net.to_json())))
    assert (back.netns, back.endpoints, back.tap_fds) == (net.netns, net.endpoints, [])


# -- guest: rtnetlink encoding ------------------------------------------------

def _attrs(data: bytes) -> dict[int, bytes]:
    out = {}
    while data:
        length, kind = struct.unpack_from("=HH", data)
        out[kind] = data[4:length]
        data = data[(length + 3) & ~3:]
    return out


def test_ipv4_address_request_has_local_address_and_broadcast() -> None:
    body = guest.address_body(2, "10.88.0.5", 16)
    assert body[:8] == bytes([V4, 16, 0, 0]) + struct.pack("=I", 2)
    assert _attrs(body[8:]) == {guest.IFA_LOCAL: bytes([10, 88, 0, 5]),
                                guest.IFA_ADDRESS: bytes([10, 88, 0, 5]),
                                guest.IFA_BROADCAST: bytes([10, 88, 255, 255])}


def test_ipv6_address_request_skips_duplicate_address_detection() -> None:
    body = guest.address_body(3, "fd00::5", 64)
    assert body[:4] == bytes([V6, 64, guest.IFA_F_NODAD, 0])
    attrs = _attrs(body[8:])
    assert attrs[guest.IFA_ADDRESS] == socket.inet_pton(V6, "fd00::5")
    assert attrs[guest.IFA_FLAGS] == struct.pack("=I", guest.IFA_F_NODAD)


def test_routes_are_scope_link_without_gateway_and_universe_with_one() -> None:
    on_link = guest.route_body(guest.Route("10.99.0.0/16", device="eth0"), 2)
    family, dst_len, _, _, table, proto, scope, kind, _ = struct.unpack_from("=8BI", on_link)
    assert (family, dst_len, table, proto, scope, kind) == (V4, 16, 254, 4, 253, 1)
    assert _attrs(on_link[12:]) == {guest.RTA_DST: bytes([10, 99, 0, 0]),
                                    guest.RTA_OIF: struct.pack("=I", 2)}
    default = guest.route_body(guest.Route("0.0.0.0/0", "10.88.0.1", "eth0", "10.88.0.5"), 2)
    assert default[1] == 0 and default[6] == 0
    assert _attrs(default[12:]) == {guest.RTA_GATEWAY: bytes([10, 88, 0, 1]),
                                    guest.RTA_PREFSRC: bytes([10, 88, 0, 5]),
                                    guest.RTA_OIF: struct.pack("=I", 2)}
    v6 = guest.route_body(guest.Route("fd01::/64", device="eth0"), 2)
    assert v6[6] == 0  # IPv6 routes are always scope universe


def test_link_request_sets_up_mtu_and_name() -> None:
    body = guest.link_body(4, up=True, mtu=1400, name="eth0")
    assert body[:16] == struct.pack("=BxHiII", 0, 0, 4, 1, 1)
    assert _attrs(body[16:]) == {guest.IFLA_MTU: struct.pack("=I", 1400),
                                 guest.IFLA_IFNAME: b"eth0\0"}
    assert guest.link_body(4)[:16] == struct.pack("=BxHiII", 0, 0, 4, 0, 0)  # changes nothing


def test_message_header_asks_for_an_ack() -> None:
    msg = guest.message(guest.RTM_NEWADDR, guest.NLM_F_CREATE, 7, b"x" * 8)
    assert struct.unpack_from("=IHHII", msg) == (24, 20, 0x405, 7, 0)


@pytest.mark.parametrize("bad", [
    lambda: guest.parse_cidr("10.0.0.0/33"),
    lambda: guest.parse_cidr("10.0.0.0"),
    lambda: guest.parse_ip("not-an-address"),
    lambda: guest.address_body(1, "10.0.0.1", 0),
    lambda: guest.route_body(guest.Route("0.0.0.0/0", "fd00::1", "eth0"), 1),
])
def test_malformed_addresses_and_routes_are_invalid_arguments(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        bad()  # type: ignore[operator]


# -- the RPC -------------------------------------------------------------------

@pytest.fixture
def client(tmp_path: Path) -> Iterator[AgentClient]:
    server = AgentServer(f"unix:{tmp_path / 'agent.sock'}", tmp_path)
    server.start()
    c = AgentClient(f"unix:{tmp_path / 'agent.sock'}")
    yield c
    c.close()
    server.stop(0)


@pytest.mark.parametrize("interfaces, routes, reason", [
    ([host.Interface("eth0", "aa:bb:cc:00:00:02", 1400, (host.IPAddress("10.0.0.2", 99),))],
     [], "bad prefix length"),
    ([host.Interface("a/b", "aa:bb:cc:00:00:02", 1400)], [], "not an interface name"),
    ([host.Interface("eth0", "aa:bb:cc:00:00:02", 1400)],
     [host.Route("0.0.0.0/0", "eth9", "10.0.0.1")], "no interface 'eth9'"),
])
def test_configure_network_refuses_a_bad_request_before_changing_anything(
        client: AgentClient, interfaces: list[host.Interface], routes: list[host.Route],
        reason: str) -> None:
    with pytest.raises(AgentError, match=f"INVALID_ARGUMENT.*{reason}"):
        client.configure_network(interfaces, routes)
