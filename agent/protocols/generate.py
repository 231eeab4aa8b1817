"""Regenerate agent_pb2.py / agent_pb2_grpc.py from agent.proto.

The generated code is committed (the guest image copies it, and nothing at
install time needs grpcio-tools); tests/unit/test_protocol.py fails when it is
stale. Run with the dev environment: `python agent/protocols/generate.py`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE_PATH = Path("kata_py/agent/protocols")
OUTPUTS = ("agent_pb2.py", "agent_pb2_grpc.py", "agent_pb2.pyi")


def generate(out_dir: Path) -> None:
    """Write the generated modules for agent.proto into out_dir."""
    from grpc_tools import protoc  # dev dependency only

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        (src / PACKAGE_PATH).mkdir(parents=True)
        shutil.copy(HERE / "agent.proto", src / PACKAGE_PATH / "agent.proto")
        gen = Path(tmp) / "gen"
        gen.mkdir()
        # Generating from kata_py/agent/protocols/ makes the _grpc module
        # import `kata_py.agent.protocols.agent_pb2`, not a top-level name.
        rc = protoc.main([
            "protoc", f"-I{src}", f"--python_out={gen}", f"--pyi_out={gen}",
            f"--grpc_python_out={gen}", str(PACKAGE_PATH / "agent.proto"),
        ])
        if rc != 0:
            raise SystemExit(f"protoc failed with exit code {rc}")
        for name in OUTPUTS:
            shutil.copy(gen / PACKAGE_PATH / name, out_dir / name)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
