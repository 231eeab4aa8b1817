"""Guest networking: applies the NICs and routes the host describes, through
rtnetlink (rtnetlink(7); layouts from linux/netlink.h, linux/rtnetlink.h,
linux/if_link.h, linux/if_addr.h).

Owns: finding each NIC by MAC (/sys/class/net), its name, MTU, addresses
and link state, the routes, and `lo` up — in the guest's own network
namespace, which a container shares unless its spec asks for a new one.
Must not: decide what the network looks like (the host does, in
kata_py/network.py), or touch namespaces, or fork.

A small encoder of its own instead of pyroute2: three request types are
~100 lines, while pyroute2 0.9 would add 5 MiB to the image, needs ssl and
sqlite3 (which the image trims), and takes 1.2–1.5 s to import in the guest
under TCG. This module is imported with the server (its import is a few
ms; NamedTuples, not dataclasses, to keep it so), because a first import
inside a gRPC handler was measured 0.15–0.3 s slower.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from kata_py.agent.errors import InvalidArgument, NotFound

SYS_NET = Path("/sys/class/net")
NIC_WAIT_S = 5.0            # virtio_net is loaded by the init; this is a margin
NIC_POLL_S = 0.05
REPLY_TIMEOUT_S = 5.0
IFNAMSIZ = 16

# <linux/netlink.h>
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
# <linux/rtnetlink.h>, <linux/if_link.h>, <linux/if_addr.h>, <linux/if.h>
RTM_NEWLINK = 16
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
IFLA_IFNAME = 3
IFLA_MTU = 4
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4
IFA_FLAGS = 8
IFA_F_NODAD = 0x02
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PREFSRC = 7
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1
IFF_UP = 0x1

_HEADER = struct.Struct("=IHHII")        # struct nlmsghdr
_IFINFO = struct.Struct("=BxHiII")       # struct ifinfomsg
_IFADDR = struct.Struct("=BBBBI")        # struct ifaddrmsg
_RTMSG = struct.Struct("=BBBBBBBBI")     # struct rtmsg


class Interface(NamedTuple):
    name: str
    mac: str
    mtu: int
    addresses: tuple[tuple[str, int], ...] = ()   # (address, prefix length)


class Route(NamedTuple):
    destination: str       # CIDR
    gateway: str = ""
    device: str = ""
    source: str = ""


# -- encoding (pure) --------------------------------------------------------

def attr(kind: int, data: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return _HEADER.pack(_HEADER.size + len(body), kind, flags | NLM_F_REQUEST | NLM_F_ACK,
                        seq, 0) + body


def parse_ip(text: str) -> tuple[int, bytes]:
    """(family, packed address), or InvalidArgument."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return family, socket.inet_pton(family, text)
    except OSError as exc:
        raise InvalidArgument(f"{text!r} is not an IP address") from exc


def parse_cidr(text: str) -> tuple[int, bytes, int]:
    """(family, packed address, prefix length) of "addr/len"."""
    address, sep, length = text.partition("/")
    family, packed = parse_ip(address)
    bits = len(packed) * 8
    if not sep or not length.isdigit() or int(length) > bits:
        raise InvalidArgument(f"{text!r} is not a CIDR (address/0-{bits})")
    return family, packed, int(length)


def link_body(index: int, up: bool | None = None, mtu: int | None = None,
              name: str | None = None) -> bytes:
    flags = IFF_UP if up else 0
    change = IFF_UP if up is not None else 0
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change)
    if mtu is not None:
        body += attr(IFLA_MTU, struct.pack("=I", mtu))
    if name is not None:
        body += attr(IFLA_IFNAME, name.encode() + b"\0")
    return body


def address_body(index: int, address: str, prefix_len: int) -> bytes:
    family, packed = parse_ip(address)
    if not 0 < prefix_len <= len(packed) * 8:
        raise InvalidArgument(f"{address}/{prefix_len}: bad prefix length")
    # IPv6: no duplicate address detection — the host's veth already did
    # it for this address, and a tentative address would delay routes.
    flags = IFA_F_NODAD if family == socket.AF_INET6 else 0
    body = _IFADDR.pack(family, prefix_len, flags, RT_SCOPE_UNIVERSE, index)
    body += attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed)
    if family == socket.AF_INET and prefix_len <= 30:
        host_bits = (1 << (32 - prefix_len)) - 1
        body += attr(IFA_BROADCAST, struct.pack("!I", struct.unpack("!I", packed)[0] | host_bits))
    if flags:
        body += attr(IFA_FLAGS, struct.pack("=I", flags))
    return body


def route_body(route: Route, oif: int) -> bytes:
    family, dst, dst_len = parse_cidr(route.destination)
    # iproute2's rule: an IPv4 route without a gateway is scope link.
    scope = (RT_SCOPE_LINK if family == socket.AF_INET and not route.gateway
             else RT_SCOPE_UNIVERSE)
    body = _RTMSG.pack(family, dst_len, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, scope,
                       RTN_UNICAST, 0)
    if dst_len:
        body += attr(RTA_DST, dst)
    for kind, text in ((RTA_GATEWAY, route.gateway), (RTA_PREFSRC, route.source)):
        if text:
            fam, packed = parse_ip(text)
            if fam != family:
                raise InvalidArgument(f"route {route.destination}: {text} is another family")
            body += attr(kind, packed)
    return body + attr(RTA_OIF, struct.pack("=I", oif))


# -- the socket ---------------------------------------------------------------

class Rtnl:
    """A NETLINK_ROUTE socket sending one acknowledged request at a time."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.sock.settimeout(REPLY_TIMEOUT_S)
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, kind: int, flags: int, body: bytes, what: str) -> None:
        """Send; raise OSError(errno, what) if the kernel refuses."""
        self.seq += 1
        self.sock.send(message(kind, flags, self.seq, body))
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, mtype, _flags, seq, _pid = _HEADER.unpack_from(data, offset)
                if mtype == NLMSG_ERROR and seq == self.seq:
                    (err,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                    if err:
                        raise OSError(-err, f"{what}: {os.strerror(-err)}")
                    return
                if length < _HEADER.size:
                    break
                offset += (length + 3) & ~3

    def set_link(self, index: int, what: str, up: bool | None = None, mtu: int | None = None,
                 name: str | None = None) -> None:
        self.request(RTM_NEWLINK, 0, link_body(index, up, mtu, name), what)


# -- applying -----------------------------------------------------------------

def _nics() -> dict[str, tuple[str, int]]:
    """MAC → (name, ifindex) of the guest's interfaces."""
    found = {}
    for d in SYS_NET.iterdir():
        try:
            mac = (d / "address").read_text().strip().lower()
            found[mac] = (d.name, int((d / "ifindex").read_text()))
        except (OSError, ValueError):
            continue
    return found


def _await_nics(macs: Sequence[str]) -> dict[str, tuple[str, int]]:
    deadline = time.monotonic() + NIC_WAIT_S
    while True:
        found = _nics()
        missing = [m for m in macs if m not in found]
        if not missing:
            return found
        if time.monotonic() > deadline:
            raise NotFound(f"no guest NIC with MAC {', '.join(missing)} "
                           f"(the guest has {', '.join(sorted(v[0] for v in found.values()))})")
        time.sleep(NIC_POLL_S)


def _check(interfaces: Sequence[Interface], routes: Sequence[Route]) -> None:
    """Refuse a bad request before anything in the guest changes."""
    for i in interfaces:
        if not 0 < len(i.name.encode()) < IFNAMSIZ or "/" in i.name or i.name.strip() != i.name:
            raise InvalidArgument(f"{i.name!r} is not an interface name")
        if i.mtu and not 68 <= i.mtu <= 65535:
            raise InvalidArgument(f"MTU {i.mtu} of {i.name} is out of range")
        for address, prefix_len in i.addresses:
            address_body(0, address, prefix_len)
    names = {i.name for i in interfaces}
    for r in routes:
        route_body(r, 0)
        if r.device not in names:
            raise InvalidArgument(f"route {r.destination}: no interface {r.device!r}")


def configure(interfaces: Sequence[Interface], routes: Sequence[Route]) -> None:
    """Name, MTU, up and addresses for each NIC (by MAC); then the routes."""
    _check(interfaces, routes)
    nl = Rtnl()
    try:
        nl.set_link(socket.if_nametoindex("lo"), "bring lo up", up=True)
        found = _await_nics([i.mac.lower() for i in interfaces]) if interfaces else {}
        index = {i.name: found[i.mac.lower()][1] for i in interfaces}
        renamed = [i for i in interfaces if found[i.mac.lower()][0] != i.name]
        # Two passes, so that names can swap; a link must be down to be renamed.
        for i in renamed:
            nl.set_link(index[i.name], f"rename {found[i.mac.lower()][0]}", up=False,
                        name=f"kpnet{index[i.name]}")
        for i in renamed:
            nl.set_link(index[i.name], f"rename NIC {i.mac} to {i.name}", name=i.name)
        for i in interfaces:
            nl.set_link(index[i.name], f"set MTU {i.mtu} and bring up {i.name}", up=True,
                        mtu=i.mtu or None)
            for address, prefix_len in i.addresses:
                nl.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE,
                           address_body(index[i.name], address, prefix_len),
                           f"add {address}/{prefix_len} to {i.name}")
        for r in routes:
            via = f" via {r.gateway}" if r.gateway else ""
            nl.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, route_body(r, index[r.device]),
                       f"add route {r.destination}{via} dev {r.device}")
    finally:
        nl.close()
