"""End to end: real engines (podman + conmon from Debian) driving kata-py."""
