"""The in-guest agent: gRPC server on vsock port 1024 (runs inside the micro-VM)."""
