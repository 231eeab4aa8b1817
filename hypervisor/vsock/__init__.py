"""vsock transports: kernel vhost-vsock, or the vhost-user vsock backend in Python."""
