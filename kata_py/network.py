"""Host side of container networking, in Kata's "tcfilter" model.

Owns: the sandbox's NICs on the host. The input is the network namespace
that config.json names by path (`linux.namespaces[type=network].path`, made
by netavark/CNI); without one the VM gets no NIC (only `lo`). Inside that
namespace, for each interface that is up and has a MAC (typically the veth
`eth0`), `setup` creates a tap (`tap<N>_kp`) with the veth's MTU, opens it
for QEMU (`/dev/net/tun`, IFF_TAP|IFF_NO_PI|IFF_VNET_HDR; QEMU inherits the
fd), and joins veth and tap with an ingress qdisc on each plus a match-all
u32 filter whose action is `mirred egress redirect` to the other one
(tc-mirred(8)): every frame that arrives on one leaves by the other, so the
guest's virtio-net NIC — given the veth's MAC — stands in for the veth. It
also describes, for the guest agent, what the guest must configure: each
interface's MAC, MTU and addresses (IPv6 link-local excluded) and the routes
the guest does not make itself (kernel-made routes are skipped).

`teardown` deletes the taps and the veth's ingress qdisc; it is idempotent
and quiet when the namespace or the devices are already gone.

Must not: create or delete namespaces or veths (netavark/CNI own them),
decide start/stop order (kata_py/sandbox.py), or talk to the guest.

Namespace entry: setns(2) on the calling thread and back (restored in a
`finally`), not pyroute2's `netns=`, which forks a helper process — not
allowed once gRPC threads run (teardown). Netlink sockets and the tun fd
stay bound to the namespace they were opened in, so all netlink work after
opening runs back in our own namespace. pyroute2 is imported lazily: CLI
verbs that never touch the network do not pay its import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import logging
import os
import re
import socket
import struct
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kata_py.errors import ResourceError

if TYPE_CHECKING:
    from kata_py.spec import Spec

log = logging.getLogger(__name__)

TAP_NAME = "tap{}_kp"
TAP_PATTERN = re.compile(r"^tap\d+_kp$")
TUN_DEVICE = "/dev/net/tun"
CLONE_NEWNET = 0x40000000
# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
# <linux/if.h>, <linux/if_arp.h>, <linux/rtnetlink.h>, <linux/pkt_sched.h>
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RTPROT_KERNEL = 2
INGRESS_HANDLE = 0xFFFF0000
TC_H_INGRESS = 0xFFFFFFF1    # the parent of ingress and clsact qdiscs
ETH_P_ALL = 0x0003
FILTER_PRIO = 49152          # what tc(8) picks for the first filter
ZERO_MAC = "00:00:00:00:00:00"


@dataclass(frozen=True)
class IPAddress:
    address: str
    prefix_len: int

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.address else socket.AF_INET


@dataclass(frozen=True)
class Interface:
    """What the guest configures on the NIC with this MAC."""

    name: str
    mac: str
    mtu: int
    addresses: tuple[IPAddress, ...] = ()


@dataclass(frozen=True)
class Route:
    """A route for the guest; destination is a CIDR (0.0.0.0/0, ::/0 for default)."""

    destination: str
    device: str
    gateway: str = ""
    source: str = ""


@dataclass(frozen=True)
class Endpoint:
    """A veth in the namespace and the tap that mirrors it."""

    veth: str
    tap: str


@dataclass
class SandboxNetwork:
    """The sandbox's NICs: what to tear down, what to tell the guest, and
    the open tap fds QEMU inherits (closed by us once QEMU has them)."""

    netns: Path
    endpoints: tuple[Endpoint, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    routes: tuple[Route, ...] = ()
    tap_fds: list[int] = field(default_factory=list)

    def close_fds(self) -> None:
        for fd in self.tap_fds:
            os.close(fd)
        self.tap_fds = []

    def to_json(self) -> dict[str, Any]:
        return {"netns": str(self.netns),
                "endpoints": [{"veth": e.veth, "tap": e.tap} for e in self.endpoints]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxNetwork:
        return cls(Path(data["netns"]),
                   tuple(Endpoint(e["veth"], e["tap"]) for e in data.get("endpoints", ())))


def netns_path(spec: Spec) -> Path | None:
    """The host network namespace config.json names by path, if any."""
    for ns in spec.linux.namespaces if spec.linux else ():
        if ns.type == "network" and ns.path:
            return Path(ns.path)
    return None


# -- description: pure functions over what netlink reports -----------------

@dataclass(frozen=True)
class Link:
    index: int
    name: str
    mac: str
    mtu: int
    flags: int


@dataclass(frozen=True)
class Addr:
    index: int
    family: int
    address: str
    prefix_len: int


@dataclass(frozen=True)
class RouteEntry:
    family: int
    dst: str
    dst_len: int
    gateway: str
    oif: int
    prefsrc: str
    table: int
    proto: int
    type: int


def link_from_msg(msg: Any) -> Link:
    """A pyroute2 ifinfmsg as a Link."""
    return Link(int(msg["index"]), msg.get("ifname") or "", (msg.get("address") or "").lower(),
                int(msg.get("mtu") or 0), int(msg["flags"]))


def addr_from_msg(msg: Any) -> Addr:
    """A pyroute2 ifaddrmsg as an Addr (IFA_LOCAL first: on a point-to-point
    link IFA_ADDRESS is the peer's)."""
    return Addr(int(msg["index"]), int(msg["family"]),
                msg.get("local") or msg.get("address") or "", int(msg["prefixlen"]))


def route_from_msg(msg: Any) -> RouteEntry:
    table = msg.get("table")
    return RouteEntry(int(msg["family"]), msg.get("dst") or "", int(msg["dst_len"]),
                      msg.get("gateway") or "", int(msg.get("oif") or 0),
                      msg.get("prefsrc") or "", int(table if table is not None else msg["table"]),
                      int(msg["proto"]), int(msg["type"]))


def mirrored_links(links: Iterable[Link]) -> list[Link]:
    """The links that get a tap: up, not loopback, with a MAC, not our own taps."""
    return [link for link in links
            if link.flags & IFF_UP and not link.flags & IFF_LOOPBACK
            and link.mac and link.mac != ZERO_MAC and not TAP_PATTERN.match(link.name)]


def _link_local_v6(address: str) -> bool:
    return address.lower().startswith(("fe8", "fe9", "fea", "feb"))


def describe(links: Sequence[Link], addrs: Iterable[Addr], routes: Iterable[RouteEntry]
             ) -> tuple[tuple[Interface, ...], tuple[Route, ...]]:
    """The guest's interfaces and routes for the given (mirrored) links.

    Addresses: IPv4 and IPv6 except IPv6 link-local (the guest makes its
    own). Routes: main table, unicast, on one of the links; kernel-made ones
    (the subnet route of each address, fe80::/64) are skipped because the
    guest's kernel makes them too. Routes without a gateway come first so
    that a gateway is reachable before a route uses it.
    """
    names = {link.index: link.name for link in links}
    per_link: dict[int, list[IPAddress]] = {link.index: [] for link in links}
    for a in addrs:
        if a.index not in per_link or a.family not in (socket.AF_INET, socket.AF_INET6):
            continue
        if a.family == socket.AF_INET6 and _link_local_v6(a.address):
            continue
        per_link[a.index].append(IPAddress(a.address, a.prefix_len))
    interfaces = tuple(Interface(link.name, link.mac, link.mtu, tuple(per_link[link.index]))
                       for link in links)
    out: list[Route] = []
    for r in routes:
        if (r.table != RT_TABLE_MAIN or r.type != RTN_UNICAST or r.proto == RTPROT_KERNEL
                or r.oif not in names or r.family not in (socket.AF_INET, socket.AF_INET6)):
            continue
        if r.family == socket.AF_INET6 and r.dst and _link_local_v6(r.dst):
            continue
        default = "::" if r.family == socket.AF_INET6 else "0.0.0.0"
        out.append(Route(f"{r.dst or default}/{r.dst_len}", names[r.oif], r.gateway, r.prefsrc))
    out.sort(key=lambda route: bool(route.gateway))
    return interfaces, tuple(out)


# -- the namespace -----------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns into {what}: {os.strerror(err)}")


@contextmanager
def _entered(netns: Path) -> Iterator[None]:
    """This thread in network namespace `netns` for the block."""
    target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, str(netns))
            try:
                yield
            finally:
                _setns(own, "our own network namespace")
        finally:
            os.close(own)
    finally:
        os.close(target)


def _open_tap(name: str) -> int:
    """A new tap `name` in this thread's namespace; it lives while an fd does."""
    fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF,
                    struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    except OSError:
        os.close(fd)
        raise
    return fd


def _ipr_in(netns: Path) -> Any:
    from pyroute2 import IPRoute  # lazily: ~0.1 s of import

    with _entered(netns):
        return IPRoute()


def _error(netns: Path, exc: BaseException) -> ResourceError:
    code = getattr(exc, "code", None) or getattr(exc, "errno", None)
    reason = os.strerror(code) if isinstance(code, int) and code else str(exc)
    return ResourceError(f"network namespace {netns}: {reason} ({exc})",
                         "check the namespace and its interfaces (ip -n NAME link)")


def setup(netns: Path) -> SandboxNetwork:
    """Taps mirroring each up interface of `netns`; on failure nothing stays."""
    if not netns.exists():
        raise ResourceError(f"network namespace {netns} does not exist",
                            "check linux.namespaces[].path in config.json")
    net = SandboxNetwork(netns)
    try:
        ipr = _ipr_in(netns)
    except OSError as exc:
        raise _error(netns, exc) from exc
    try:
        links = mirrored_links(link_from_msg(m) for m in ipr.get_links())
        _check_ingress_free(ipr, netns, links)
        endpoints = []
        with _entered(netns):
            for i, link in enumerate(links):
                endpoints.append(Endpoint(link.name, TAP_NAME.format(i)))
                net.endpoints = tuple(endpoints)
                net.tap_fds.append(_open_tap(endpoints[-1].tap))
        for link, ep in zip(links, net.endpoints, strict=True):
            _mirror(ipr, link, ep.tap)
        net.interfaces, net.routes = describe(
            links, (addr_from_msg(m) for m in ipr.get_addr()),
            (route_from_msg(m) for family in (socket.AF_INET, socket.AF_INET6)
             for m in ipr.get_routes(family=family)))
    except BaseException as exc:
        net.close_fds()
        teardown(net)
        if isinstance(exc, Exception) and not isinstance(exc, ResourceError):
            raise _error(netns, exc) from exc
        raise
    finally:
        ipr.close()
    log.info("network %s: %s", netns,
             ", ".join(f"{e.veth}<->{e.tap}" for e in net.endpoints) or "no interface to mirror")
    return net


def _check_ingress_free(ipr: Any, netns: Path, links: Sequence[Link]) -> None:
    """Refuse a veth that already has an ingress (or clsact) qdisc: it is not
    ours to replace, and teardown must only ever delete our own."""
    names = {link.index: link.name for link in links}
    for qdisc in ipr.get_qdiscs():
        if qdisc["index"] in names and qdisc["parent"] == TC_H_INGRESS:
            raise ResourceError(f"network namespace {netns}: {names[qdisc['index']]} already "
                                f"has an ingress qdisc ({qdisc.get('kind')})",
                                "kata-py redirects its ingress to the VM; remove that qdisc")


def _mirror(ipr: Any, veth: Link, tap: str) -> None:
    """tap up with the veth's MTU; ingress redirect veth→tap and tap→veth."""
    tap_index = ipr.link_lookup(ifname=tap)[0]
    ipr.link("set", index=tap_index, mtu=veth.mtu, state="up")
    for source, target in ((veth.index, tap_index), (tap_index, veth.index)):
        ipr.tc("add", "ingress", source, INGRESS_HANDLE)
        ipr.tc("add-filter", "u32", source, parent=INGRESS_HANDLE, prio=FILTER_PRIO,
               protocol=ETH_P_ALL, target=0, keys=["0x0/0x0+0"],
               action={"kind": "mirred", "direction": "egress", "action": "redirect",
                       "ifindex": target})


def teardown(net: SandboxNetwork) -> None:
    """Delete the taps and the veths' ingress qdiscs (filters go with them).

    Idempotent; a namespace or device that is already gone is not an error.
    Logs what it cannot undo, never raises.
    """
    if not net.endpoints or not net.netns.exists():
        return
    try:
        ipr = _ipr_in(net.netns)
    except OSError as exc:
        # EINVAL: the path no longer is a namespace (unmounted, file left).
        log.info("network %s: not entered (%s); nothing to tear down", net.netns, exc)
        return
    try:
        for ep in net.endpoints:
            for name, what in ((ep.tap, "link"), (ep.veth, "qdisc")):
                found = ipr.link_lookup(ifname=name)
                if not found:
                    continue
                try:
                    if what == "link":
                        ipr.link("del", index=found[0])
                    else:
                        ipr.tc("del", "ingress", found[0], INGRESS_HANDLE)
                except Exception as exc:  # noqa: BLE001 - NetlinkError is no OSError
                    if getattr(exc, "code", None) not in (2, 19, 22):  # ENOENT ENODEV EINVAL
                        log.error("network %s: removing the %s of %s: %s", net.netns, what,
                                  name, exc)
    finally:
        ipr.close()
