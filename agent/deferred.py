"""Deferred imports: modules that gRPC imports but a synchronous gRPC server
(the agent) or client (the host's CLI and monitor) never uses.

`import grpc` imports `grpc.aio`, and both cygrpc and grpc.aio import asyncio,
for an agent that serves with threads. Measured in the guest under TCG
(medians of 4 boots): importing the server takes 1.25 s instead of 1.55 s,
and the agent is ready ≈ 0.2 s sooner. On the host, with asyncio no longer
imported at the top of kata_py.hypervisor.qemu either, a CLI verb's imports
take ≈ 140 ms instead of ≈ 265 ms.

Before the agent imports grpc, `defer()` puts a stand-in module in
sys.modules for each; the first use of a stand-in's attribute imports the
real module and the stand-in forwards to it from then on, so nothing breaks
if something does use them (it only costs the import later). importlib.util.LazyLoader would be the
stdlib's way, but its modules load on any attribute access, dunders included,
which `from grpc import aio` does at once.
"""

from __future__ import annotations

import importlib
import sys
import types

# protobuf's pure-Python message implementation (with text_format, the
# encoders, pickle, datetime, ...): descriptor_pool and the generated code's
# builder import it even when the C (upb) implementation is the one in use.
DEFERRED = ("asyncio", "grpc.aio", "google.protobuf.internal.python_message")


class _StandIn(types.ModuleType):
    """A module that imports the real one on first use of a public attribute."""

    def __getattr__(self, name: str) -> object:
        # Only called when ordinary lookup fails, i.e. for everything the real
        # module has. Dunders (__file__, ...) stay absent: import machinery
        # probing them must not trigger the import. __path__ is asked for only
        # to import a submodule (`import asyncio.events`): that is a use.
        if name.startswith("__") and name.endswith("__") and name != "__path__":
            raise AttributeError(name)
        return getattr(self._real(), name)

    def _real(self) -> types.ModuleType:
        real = self.__dict__.get("_deferred_real")
        if real is None:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            real = importlib.import_module(self.__name__)
            self.__dict__["_deferred_real"] = real
        return real


def defer(names: tuple[str, ...] = DEFERRED) -> None:
    """Stand in for `names` that are not imported yet (call before importing grpc)."""
    for name in names:
        if name not in sys.modules:
            sys.modules[name] = _StandIn(name)


def is_deferred(name: str) -> bool:
    """True while `name` is still a stand-in that was never used."""
    module = sys.modules.get(name)
    return isinstance(module, _StandIn) and "_deferred_real" not in module.__dict__
