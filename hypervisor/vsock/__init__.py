"""vsock transports: kernel vhost-vsock, or the vhost-user vsock backend in Python.

The backend (one process per sandbox, ``python -m kata_py.hypervisor.vsock.backend``)
is layered bottom-up; each module cites the spec it implements:

- ``packet``: the 44-byte virtio_vsock_hdr (virtio spec 5.10.6);
- ``virtqueue``: guest memory regions and the split virtqueue (virtio spec 2.7);
- ``vhost_user``: vhost-user framing and front-end session state (QEMU vhost-user.rst);
- ``connection``: one stream's state machine and credit flow control (5.10.6.3-5);
- ``muxer``: guest streams ⇄ host unix sockets, Firecracker "hybrid vsock" style;
- ``backend``: the process, its command line and its ``selectors`` loop;
- ``client``: ``dial()``, the host side of the ``CONNECT <port>`` handshake.
"""
