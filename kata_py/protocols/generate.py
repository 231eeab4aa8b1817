"""Regenerate the *_pb2.py / *_pb2.pyi modules from every .proto here.

The generated code is committed (nothing at install time needs
grpcio-tools); tests/unit/test_protocol.py fails when it is stale. Run with
the dev environment: `python kata_py/protocols/generate.py`. The messages
travel over ttrpc (kata_py/ttrpc.py), not gRPC, so no service stubs are made.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE_PATH = Path("kata_py/protocols")


def sources() -> list[Path]:
    return sorted(HERE.glob("*.proto"))


def outputs() -> list[str]:
    return [f"{p.stem}_pb2{suffix}" for p in sources() for suffix in (".py", ".pyi")]


def generate(out_dir: Path) -> None:
    """Write the generated modules for every .proto here into out_dir."""
    if not sources():
        return
    from grpc_tools import protoc  # dev dependency only

    well_known = resources.files("grpc_tools") / "_proto"   # google/protobuf/*.proto
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        (src / PACKAGE_PATH).mkdir(parents=True)
        for proto in sources():
            shutil.copy(proto, src / PACKAGE_PATH / proto.name)
        gen = Path(tmp) / "gen"
        gen.mkdir()
        # Generating from kata_py/protocols/ makes imports between the files
        # `kata_py.protocols.x_pb2`, not top-level names.
        rc = protoc.main(["protoc", f"-I{src}", f"-I{well_known}", f"--python_out={gen}",
                          f"--pyi_out={gen}",
                          *(str(PACKAGE_PATH / p.name) for p in sources())])
        if rc != 0:
            raise SystemExit(f"protoc failed with exit code {rc}")
        for name in outputs():
            shutil.copy(gen / PACKAGE_PATH / name, out_dir / name)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
