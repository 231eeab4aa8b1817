"""The committed generated code matches agent.proto."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTOCOLS = REPO / "agent" / "protocols"


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate", PROTOCOLS / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["generate"] = module
    spec.loader.exec_module(module)
    module.generate(tmp_path)
    for name in module.OUTPUTS:
        assert (tmp_path / name).read_text() == (PROTOCOLS / name).read_text(), (
            f"{name} is stale: run `python agent/protocols/generate.py`")


def test_the_host_protocols_generated_code_is_up_to_date(tmp_path: Path) -> None:
    from kata_py.protocols import generate

    generate.generate(tmp_path)
    here = REPO / "kata_py" / "protocols"
    assert sorted(p.name for p in here.glob("*_pb2.py*")) == sorted(generate.outputs())
    for name in generate.outputs():
        assert (tmp_path / name).read_text() == (here / name).read_text(), (
            f"{name} is stale: run `python kata_py/protocols/generate.py`")
