"""On-disk state of containers under `--root` (default /run/kata-py).

Layout: <root>/<id>/state.json, written and read by records.py (atomic
writes), guarded by an flock on <root>/<id>/.lock so concurrent verbs on
one container serialise.

Pids are stored with their start time (/proc/PID/stat field 22), so a pid
reused by another process is never mistaken for the container's: the OCI
status is *derived* when read — a "created"/"running"/"paused" container
whose process is gone is reported "stopped", never stale.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kata_py import records
from kata_py.errors import (
    ConfigError,
    CorruptStateError,
    ExistsError,
    NotFoundError,
    StateError,
)
from kata_py.hypervisor.process import ProcessRef
from kata_py.lifecycle import Status
from kata_py.private import private_dir
from kata_py.records import CONTAINERS_DIR, LIVE, LOCK_FILE, STATE_FILE

REMOVE_ATTEMPTS = 5          # remove(): rounds against files appearing meanwhile
# runc's rule, plus a length cap that keeps socket paths below the root short.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_+.-]{1,64}$")

log = logging.getLogger(__name__)



def validate_container_id(container_id: str) -> None:
    if not ID_PATTERN.match(container_id) or container_id in (".", ".."):
        raise ConfigError(f"invalid container id {container_id!r}",
                          "use 1-64 characters from [A-Za-z0-9_+.-]")


@dataclass(frozen=True)
class ContainerState:
    id: str
    bundle: str
    rootfs: str
    status: Status
    created: str                           # RFC 3339, UTC
    pid: int = 0                           # the container's process as the host sees it
    pid_start_time: int = 0
    annotations: dict[str, str] = field(default_factory=dict)
    owner: str = ""
    sandbox_id: str = ""
    exit_code: int | None = None
    host_cgroup: str = ""                  # kata_py.host_cgroup path of the sandbox's processes

    def process(self) -> ProcessRef | None:
        return ProcessRef(self.pid, self.pid_start_time, "container") if self.pid else None

    def oci(self) -> dict[str, Any]:
        """The state object of the OCI runtime-spec (runtime.md "State")."""
        return records.oci_state(asdict(self))


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "id": str, "bundle": str, "rootfs": str, "status": str, "created": str, "pid": int,
    "pid_start_time": int, "annotations": dict, "owner": str, "sandbox_id": str,
    "exit_code": (int, type(None)), "host_cgroup": str}


def _corrupt(container_id: str, path: Path, why: str) -> CorruptStateError:
    return CorruptStateError(f"state of container {container_id} in {path} is corrupt ({why})",
                      f"remove it with `kata-py delete --force {container_id}`")


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def store(root: Path) -> StateStore:
    """The containers' records under a --root."""
    return StateStore(root / CONTAINERS_DIR)


class StateStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, container_id: str) -> Path:
        validate_container_id(container_id)
        return self.root / container_id

    @contextlib.contextmanager
    def lock(self, container_id: str) -> Iterator[None]:
        """Exclusive lock on one container for the duration of a verb."""
        directory = self._dir(container_id)
        try:
            fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError as exc:
            raise NotFoundError(f"container {container_id} does not exist",
                                "check the id with `kata-py list`") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def create(self, state: ContainerState) -> None:
        """Claim the id (ExistsError if taken) and write the first state."""
        directory = self._dir(state.id)
        private_dir(self.root.parent)       # --root itself
        private_dir(self.root)
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError as exc:
            raise ExistsError(f"container {state.id} already exists",
                              "pick another id or `kata-py delete` the old one") from exc
        self.save(state)

    def save(self, state: ContainerState) -> None:
        records.write(self._dir(state.id) / STATE_FILE, asdict(state))

    def load(self, container_id: str) -> ContainerState:
        """The stored state with its status made true (see module doc)."""
        path = self._dir(container_id) / STATE_FILE
        raw: dict[str, Any] = records.read(
            path, f"container {container_id}",
            f"remove it with `kata-py delete --force {container_id}`")
        try:
            state = ContainerState(**raw)
        except TypeError as exc:          # a key missing or unknown
            raise _corrupt(container_id, path, str(exc)) from exc
        wrong = [name for name, kind in _FIELD_TYPES.items()
                 if not isinstance(getattr(state, name), kind)]
        if wrong or state.id != container_id:
            raise _corrupt(container_id, path, f"bad {', '.join(wrong) or 'id'}")
        return self._refresh(state)

    def salvage_host_cgroup(self, container_id: str) -> str:
        """The host cgroup a corrupt record still names, "" if none can be
        read: `delete --force` removes it (and the guest-stats view on it)
        rather than leave both on the host."""
        try:
            raw = records.read(self._dir(container_id) / STATE_FILE, "", "")
        except (StateError, NotFoundError):
            return ""
        value = raw.get("host_cgroup")
        if not isinstance(value, str) or ".." in value.split("/"):
            return ""
        return value

    @staticmethod
    def _refresh(state: ContainerState) -> ContainerState:
        """A container whose recorded process is gone is stopped; while
        "creating", that process is the create itself until the holder
        exists (runtime.create, monitor.Monitor.setup), so a create killed half
        way leaves a stopped container that a plain delete removes."""
        proc = state.process()
        if state.status in LIVE and (proc is None or not proc.alive()):
            return replace(state, status="stopped")
        return state

    def list(self) -> list[ContainerState]:
        """Every readable container; a corrupt record is skipped with a warning."""
        if not self.root.is_dir():
            return []
        out = []
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and (entry / STATE_FILE).exists() and ID_PATTERN.match(entry.name):
                try:
                    out.append(self.load(entry.name))
                except NotFoundError:
                    continue                # deleted meanwhile
                except StateError as exc:
                    log.warning("%s", exc)
        return out

    def remove(self, container_id: str) -> None:
        """Remove the container's directory. Its files may vanish or appear
        meanwhile (a failed create's monitor tearing down at the same time as a
        `delete --force`): what is gone is gone, what came is removed too."""
        directory = self._dir(container_id)
        for _ in range(REMOVE_ATTEMPTS):
            try:
                items = list(directory.iterdir())
            except FileNotFoundError:
                return
            for item in items:
                if item.is_dir() and not item.is_symlink():
                    raise StateError(f"container {container_id}'s directory holds {item}",
                                     "remove it by hand; kata-py only writes files there")
                item.unlink(missing_ok=True)
            try:
                directory.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY:
                    raise
        raise StateError(f"container {container_id}'s directory {directory} keeps filling",
                         "stop what writes there, then `kata-py delete --force` again")
