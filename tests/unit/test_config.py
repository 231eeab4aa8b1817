"""Runtime configuration parsing: defaults, the shipped file, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from kata_py.config import RuntimeConfig, load_config, parse_config
from kata_py.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_file_equals_builtin_defaults() -> None:
    text = (REPO / "configs" / "kata-py.toml").read_text()
    assert parse_config(text) == RuntimeConfig()


def test_overrides_apply_and_ints_widen_to_floats() -> None:
    cfg = parse_config('[hypervisor]\naccelerator = "tcg"\nvcpus = 2\n'
                       '[agent]\nboot_timeout_s = 5\n')
    assert cfg.hypervisor.accelerator == "tcg"
    assert cfg.hypervisor.vcpus == 2
    assert cfg.agent.boot_timeout_s == 5.0


def test_unknown_key_is_rejected_with_its_path() -> None:
    with pytest.raises(ConfigError, match="'hypervisor.acclerator'"):
        parse_config('[hypervisor]\nacclerator = "tcg"\n')


def test_wrong_type_is_rejected() -> None:
    with pytest.raises(ConfigError, match="'hypervisor.vcpus' must be a int"):
        parse_config('[hypervisor]\nvcpus = "two"\n')


def test_bad_choice_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="use one of auto, kvm, tcg"):
        parse_config('[hypervisor]\naccelerator = "hvf"\n')


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text("[hypervisor\n")
    with pytest.raises(ConfigError, match=f"{bad} is not valid TOML"):
        load_config(str(bad))


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.toml"))
