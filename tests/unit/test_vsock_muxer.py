"""The vsock muxer's schedule toward the guest (hypervisor/vsock/muxer.py)."""

from __future__ import annotations

import selectors
import signal
import socket
from pathlib import Path
from types import FrameType

from kata_py.hypervisor.vsock.muxer import Muxer
from kata_py.hypervisor.vsock.packet import HOST_CID, Header, Op

GUEST_CID = 3


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError("next_rx_packet did not return")


def test_an_rx_buffer_too_small_for_any_payload_gets_nothing_and_does_not_spin(
        tmp_path: Path) -> None:
    sel = selectors.DefaultSelector()
    muxer = Muxer(sel, GUEST_CID, str(tmp_path / "v.sock"))
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "v.sock_9"))
    listener.listen()
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        muxer.recv(Header(src_cid=GUEST_CID, dst_cid=HOST_CID, src_port=7, dst_port=9,
                          op=Op.REQUEST, buf_alloc=65536), b"")
        server, _ = listener.accept()
        assert muxer.next_rx_packet(4096).header.op == Op.RESPONSE  # type: ignore[union-attr]
        server.sendall(b"data")
        for key, events in sel.select(5):            # the muxer reads the host socket
            key.data(events)
        assert muxer.has_rx()
        signal.setitimer(signal.ITIMER_REAL, 2.0)
        assert muxer.next_rx_packet(0) is None      # a 44-byte buffer: header only
        signal.setitimer(signal.ITIMER_REAL, 0)
        pkt = muxer.next_rx_packet(4096)            # the data is still there for a real one
        assert pkt is not None and (pkt.header.op, pkt.payload) == (Op.RW, b"data")
        server.close()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        muxer.close()
        listener.close()
        sel.close()
