"""The vhost-user vsock back-end process (``python -m kata_py.hypervisor.vsock.backend``).

Owns the process: command line, readiness signal, logging, signals and the
single-threaded ``selectors`` loop over the vhost-user socket, the kick
eventfds and every unix socket of the :class:`~.muxer.Muxer`. It moves packets
between the virtqueues (virtio spec v1.2 section 5.10.2: queue 0 rx, 1 tx; the
event queue stays in QEMU) and the muxer; protocol details live in
``vhost_user``, ``virtqueue``, ``connection`` and ``muxer``.

Lifecycle: bind VHOST_SOCK and the unix listeners, write ``READY\\n`` to
``--ready-fd`` and close it, serve exactly one front-end connection, and on
its disconnect (VM gone) or SIGTERM/SIGINT close everything, unlink the
sockets we created and exit 0. A startup error prints one line on stderr and
exits 1; a protocol error from the front-end is logged and exits 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Sequence
from types import FrameType

from .muxer import CONNECT_TIMEOUT_S, Muxer, listen_unix
from .packet import HEADER_SIZE, MAX_PAYLOAD_BYTES, Header
from .vhost_user import (
    RX_QUEUE,
    TX_QUEUE,
    ProtocolError,
    Session,
    read_message,
)
from .virtqueue import GuestMemoryError, VirtQueue, VirtQueueError

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.05  # only for a ring the front-end gave no kick fd
FRONTEND_IO_TIMEOUT_S = 10.0  # a message that started must finish within this
PROG = "kata-py-vsock-backend"


class Backend:
    """One vsock device: a vhost-user front-end on one side, unix sockets on the other."""

    def __init__(self, vhost_path: str, uds_path: str, guest_cid: int,
                 port_listeners: dict[int, str] | None = None,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self._sel = selectors.DefaultSelector()
        self._vhost_path = vhost_path
        self._listener: socket.socket | None = listen_unix(vhost_path, backlog=1)
        self._frontend: socket.socket | None = None
        self._session: Session | None = None
        self._kicks: dict[int, VirtQueue] = {}
        self._running = True
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self.exit_code = 0
        self.guest_cid = guest_cid
        try:
            self._sel.register(self._listener, selectors.EVENT_READ, self._on_accept)
            self.muxer = Muxer(self._sel, guest_cid, uds_path, port_listeners,
                               connect_timeout_s)
        except BaseException:
            self._close_vhost_listener()
            os.unlink(vhost_path)
            self._sel.close()
            raise

    # ---- lifecycle ---------------------------------------------------------

    def stop(self) -> None:
        self._running = False

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop the loop; a wakeup socket makes select() return at once."""
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._wakeup = (wake_r, wake_w)
        self._sel.register(wake_r, selectors.EVENT_READ, lambda _ev: wake_r.recv(64))
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s; exiting", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def run(self) -> int:
        """Serve until the front-end leaves or :meth:`stop`; returns the exit code."""
        try:
            while self._running:
                for key, events in self._sel.select(self._timeout()):
                    key.data(events)
                    if not self._running:
                        break
                self.muxer.expire(time.monotonic())
                self._service_queues()
        except Exception:
            log.exception("internal error: the vsock backend loop failed")
            self.exit_code = 1
        finally:
            self.close()
        return self.exit_code

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._frontend is not None:
            self._sel.unregister(self._frontend)
            self._frontend.close()
            self._frontend = None
        self.muxer.close()
        self._close_vhost_listener()
        if self._wakeup is not None:
            signal.set_wakeup_fd(-1)
            self._sel.unregister(self._wakeup[0])
            for sock in self._wakeup:
                sock.close()
            self._wakeup = None
        try:
            os.unlink(self._vhost_path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot remove %s: %s", self._vhost_path, e)
        self._sel.close()

    def _close_vhost_listener(self) -> None:
        if self._listener is not None:
            try:
                self._sel.unregister(self._listener)
            except (KeyError, ValueError):
                pass
            self._listener.close()
            self._listener = None

    def _timeout(self) -> float | None:
        timeout: float | None = None
        deadline = self.muxer.next_deadline()
        if deadline is not None:
            timeout = max(0.0, deadline - time.monotonic())
        if self._session is not None and any(q.started and q.kick_fd is None
                                             for q in self._session.queues):
            timeout = POLL_INTERVAL_S if timeout is None else min(timeout, POLL_INTERVAL_S)
        return timeout

    # ---- front-end ---------------------------------------------------------

    def _on_accept(self, _events: int) -> None:
        if self._listener is None:
            return
        try:
            sock, _addr = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self._close_vhost_listener()  # exactly one front-end
        sock.settimeout(FRONTEND_IO_TIMEOUT_S)
        self._frontend = sock
        self._session = Session(self.guest_cid, self._forget_kick)
        self._sel.register(sock, selectors.EVENT_READ, self._on_frontend)
        log.info("vhost-user front-end connected")

    def _on_frontend(self, _events: int) -> None:
        if self._frontend is None or self._session is None:
            return
        try:
            msg = read_message(self._frontend)
            if msg is None:
                log.info("vhost-user front-end disconnected; exiting")
                self.stop()
                return
            reply = self._session.handle(msg)
            if reply is not None:
                self._frontend.sendall(reply)
        except (ProtocolError, OSError) as e:
            log.error("vhost-user session failed: %s", e)
            self.exit_code = 1
            self.stop()
            return
        for q in self._session.queues:
            if q.kick_fd is not None and q.kick_fd not in self._kicks:
                self._sel.register(q.kick_fd, selectors.EVENT_READ,
                                   lambda _ev, q=q: self._on_kick(q))
                self._kicks[q.kick_fd] = q

    def _forget_kick(self, fd: int) -> None:
        """Called by the session before it closes a kick fd."""
        if self._kicks.pop(fd, None) is not None:
            self._sel.unregister(fd)

    def _on_kick(self, q: VirtQueue) -> None:
        if q.kick_fd is None or q.kick_fd not in self._kicks:
            return
        try:
            os.read(q.kick_fd, 8)
        except (BlockingIOError, InterruptedError):
            pass

    # ---- queues ------------------------------------------------------------

    def _service_queues(self) -> None:
        if self._session is None or self._session.memory is None:
            return
        for q, work in ((self._session.queues[TX_QUEUE], self._drain_tx),
                        (self._session.queues[RX_QUEUE], self._fill_rx)):
            try:
                work(q)
            except (VirtQueueError, GuestMemoryError) as e:
                log.error("vring %d is broken, ignoring it until it is set up again: %s",
                          q.index, e)
                q.detach()

    def _drain_tx(self, q: VirtQueue) -> None:
        """Guest → host: every available tx chain is one packet."""
        assert self._session is not None and self._session.memory is not None
        mem = self._session.memory
        used = False
        while (chain := q.pop()) is not None:
            data = chain.gather(mem, HEADER_SIZE + MAX_PAYLOAD_BYTES)
            q.push(chain.head, 0)
            used = True
            if len(data) < HEADER_SIZE:
                log.warning("tx chain %d has %d bytes, shorter than a header", chain.head,
                            len(data))
                continue
            hdr = Header.decode(data)
            payload = data[HEADER_SIZE : HEADER_SIZE + hdr.length]
            if len(payload) != hdr.length:
                log.warning("tx packet claims %d payload bytes, chain holds %d; dropped",
                            hdr.length, len(payload))
                continue
            if log.isEnabledFor(logging.DEBUG):
                log.debug("guest -> %s", hdr.describe())
            self.muxer.recv(hdr, payload)
        if used:
            q.notify()

    def _fill_rx(self, q: VirtQueue) -> None:
        """Host → guest: one packet per available rx chain while the muxer has any."""
        assert self._session is not None and self._session.memory is not None
        mem = self._session.memory
        used = False
        while self.muxer.has_rx():
            chain = q.pop()
            if chain is None:
                break
            room = chain.writable_len - HEADER_SIZE
            if room < 0:
                log.warning("rx chain %d has %d writable bytes, shorter than a header",
                            chain.head, chain.writable_len)
                q.push(chain.head, 0)
                used = True
                continue
            pkt = self.muxer.next_rx_packet(room)
            if pkt is None:
                q.undo_pop()
                break
            if log.isEnabledFor(logging.DEBUG):
                log.debug("guest <- %s", pkt.header.describe())
            written = chain.scatter(mem, pkt.header.encode() + pkt.payload)
            q.push(chain.head, written)
            used = True
        if used:
            q.notify()


# ---- command line ----------------------------------------------------------


def _parse_listen(value: str) -> tuple[int, str]:
    port, sep, path = value.partition("=")
    if not sep or not port.isdigit() or not path or int(port) >= 1 << 32:
        raise argparse.ArgumentTypeError(f"expected PORT=PATH, got {value!r}")
    return int(port), path


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description="vhost-user vsock back-end (hybrid vsock)")
    p.add_argument("--socket", required=True, help="vhost-user socket to listen on (for QEMU)")
    p.add_argument("--uds", required=True,
                   help="host unix socket: 'CONNECT <port>' listener; <uds>_<port> for guest dials")
    p.add_argument("--guest-cid", required=True, type=int, help="guest CID (>= 3)")
    p.add_argument("--listen", action="append", default=[], type=_parse_listen,
                   metavar="PORT=PATH", help="unix socket PATH connects to guest PORT")
    p.add_argument("--ready-fd", type=int, help="write READY\\n here once listening, then close")
    p.add_argument("--log", help="log file (default: stderr)")
    p.add_argument("--debug", action="store_true", help="log every packet")
    args = p.parse_args(argv)
    if not 3 <= args.guest_cid < 0xFFFFFFFF:
        p.error(f"--guest-cid must be at least 3 and below 2**32-1, got {args.guest_cid}")
    return args


def _signal_ready(fd: int) -> None:
    try:
        os.write(fd, b"READY\n")
    finally:
        os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    os.umask(0o077)     # its sockets and log: root's alone (kata_py/private.py)
    logging.basicConfig(
        filename=args.log,
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    try:
        backend = Backend(args.socket, args.uds, args.guest_cid, dict(args.listen))
    except OSError as e:
        msg = e.strerror or str(e)
        if args.log:
            log.error("startup failed: %s", msg)
        print(f"{PROG}: {msg}", file=sys.stderr)
        return 1

    backend.install_signal_handlers()
    if args.ready_fd is not None:
        try:
            _signal_ready(args.ready_fd)
        except OSError as e:
            log.error("cannot write to --ready-fd %d: %s", args.ready_fd, e)
            print(f"{PROG}: cannot signal readiness on fd {args.ready_fd}: {e}", file=sys.stderr)
            backend.close()
            return 1
    log.info("listening: vhost-user %s, host %s, guest cid %d", args.socket, args.uds,
             args.guest_cid)
    return backend.run()


if __name__ == "__main__":
    sys.exit(main())
