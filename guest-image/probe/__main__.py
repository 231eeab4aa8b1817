"""Probe agent: import grpc like the agent does, print a marker line, end the VM.

measure_boot.py times QEMU start -> the marker, and reads the guest-side
figures (guest clock seconds) printed with it.
"""

import os
import time

started_s = time.monotonic()
import grpc  # noqa: E402,F401  the import being measured

imported_s = time.monotonic()
print(
    f"KATA_PY_PROBE grpc-imported python_main_s={started_s:.3f} "
    f"grpc_import_s={imported_s - started_s:.3f} guest_s={imported_s:.3f}",
    flush=True,
)
# No ACPI: a power-off only halts; QEMU runs with -no-reboot, so reboot ends it.
os.execv("/bin/busybox", ["poweroff" if os.path.isdir("/sys/firmware/acpi") else "reboot", "-f"])
