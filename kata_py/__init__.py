"""kata-py: a VM-isolated OCI runtime (host side)."""

__version__ = "0.1.0"
