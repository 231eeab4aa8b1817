"""Hypervisor layer: QEMU, virtiofsd, vsock transports, accelerator probe."""
