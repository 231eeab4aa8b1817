"""The containerd front end: the shim v2 binary `containerd-shim-kata-py-v2`
(main.py), containerd's Task service over the lifecycle core (service.py),
task events (events.py), the snapshot's rootfs mounts (rootfs.py) and the
ttrpc protocol they speak (ttrpc.py)."""
