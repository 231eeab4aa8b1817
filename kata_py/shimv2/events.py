"""Task events to containerd, in the order they happen: one queue, one
publisher thread, over ttrpc to `TTRPC_ADDRESS` (containerd's
`containerd.services.events.ttrpc.v1.Events/Forward`), as containerd's own
shims do (runtime/v2/shim/publisher.go): each event wrapped in an Envelope
with its topic, our namespace and the time, retried a few times, then
dropped with a log line.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message

from kata_py.protocols import containerd_events_ttrpc_pb2 as ev_pb
from kata_py.shimv2 import ttrpc

log = logging.getLogger(__name__)

SERVICE = "containerd.services.events.ttrpc.v1.Events"
ATTEMPTS = 5
ATTEMPT_TIMEOUT_S = 5.0
STOP = None


def to_any(message: Message) -> AnyMessage:
    """containerd's Any: the bare full name as type URL (Any.Pack would add
    type.googleapis.com/, which containerd 1.6 does not look up)."""
    return AnyMessage(type_url=message.DESCRIPTOR.full_name, value=message.SerializeToString())


class Publisher:
    def __init__(self, address: str, namespace: str) -> None:
        self.address = address.removeprefix("unix://")
        self.namespace = namespace
        self._queue: queue.Queue[tuple[str, Message] | None] = queue.Queue()
        self._client: ttrpc.Client | None = None
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._thread.start()

    def publish(self, topic: str, event: Message) -> None:
        self._queue.put((topic, event))

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (within the timeout), then stop."""
        self._queue.put(STOP)
        self._thread.join(timeout_s)
        if self._client is not None:
            self._client.close()

    def _run(self) -> None:
        while (item := self._queue.get()) is not STOP:
            topic, event = item
            envelope = ev_pb.Envelope(namespace=self.namespace, topic=topic, event=to_any(event))
            envelope.timestamp.GetCurrentTime()
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    self._forward(envelope)
                    break
                except (OSError, ttrpc.TtrpcError) as exc:
                    log.warning("event %s not delivered (attempt %d): %s", topic, attempt, exc)
                    if self._client is not None:
                        self._client.close()
                        self._client = None
                    time.sleep(attempt * 0.2)

    def _forward(self, envelope: ev_pb.Envelope) -> None:
        if not self.address:
            return                          # no containerd to tell (a test, or by hand)
        if self._client is None:
            self._client = ttrpc.Client(self.address)
        self._client.call(SERVICE, "Forward", ev_pb.ForwardRequest(envelope=envelope),
                          Empty, timeout=ATTEMPT_TIMEOUT_S)
