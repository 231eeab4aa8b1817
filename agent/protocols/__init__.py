"""Generated gRPC/protobuf code for agent.proto (see agent/protocols/README)."""
