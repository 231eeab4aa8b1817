"""The runtime configuration (TOML): hypervisor, virtiofsd, vsock, agent, factory.

Looked up in order: the `--config` path, `$KATA_PY_CONFIG`,
`/etc/kata-py/configuration.toml`; with none, the defaults below apply
(configs/kata-py.toml documents the same values — a unit test keeps them
equal). Unknown sections or keys are rejected with their TOML path so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from kata_py.errors import ConfigError

ENV_CONFIG = "KATA_PY_CONFIG"
SYSTEM_CONFIG = Path("/etc/kata-py/configuration.toml")


@dataclass(frozen=True)
class HypervisorConfig:
    path: str = "qemu-system-x86_64"
    machine: str = "microvm"            # microvm | q35
    accelerator: str = "auto"           # auto | kvm | tcg
    vcpus: int = 2          # configs/kata-py.toml says why
    memory_mib: int = 512
    tcg_tb_size_mib: int = 32           # TCG code cache; 32 vs 64: -38 MiB RSS, same boot time
    kernel_params: str = ""             # appended to the guest command line
    image_dir: str = "/var/cache/kata-py/guest"


@dataclass(frozen=True)
class VirtiofsdConfig:
    path: str = ""                      # empty: /usr/lib/qemu/virtiofsd, then PATH
    cache: str = "auto"                 # auto | always | none


@dataclass(frozen=True)
class VsockConfig:
    transport: str = "auto"             # auto | vhost | vhost-user


@dataclass(frozen=True)
class AgentConfig:
    boot_timeout_s: float = 60.0        # VM start → agent answers health
    log_level: str = "warning"          # the agent's log level (to the console log)


@dataclass(frozen=True)
class FactoryConfig:
    template: bool = True               # restore sandboxes from a saved VM (kata_py/factory.py)
    template_dir: str = "/var/cache/kata-py/templates"


@dataclass(frozen=True)
class RuntimeConfig:
    state_dir: str = "/run/kata-py"
    stats_view: bool = True             # the guest's figures at the host cgroup (statsview.py)
    proc_view: bool = True              # the guest's processes as the holder's /proc (procview.py)
    hypervisor: HypervisorConfig = field(default_factory=HypervisorConfig)
    virtiofsd: VirtiofsdConfig = field(default_factory=VirtiofsdConfig)
    vsock: VsockConfig = field(default_factory=VsockConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    factory: FactoryConfig = field(default_factory=FactoryConfig)


_CHOICES = {
    "hypervisor.machine": ("microvm", "q35"),
    "hypervisor.accelerator": ("auto", "kvm", "tcg"),
    "virtiofsd.cache": ("auto", "always", "none"),
    "vsock.transport": ("auto", "vhost", "vhost-user"),
}


def _build(cls: Any, data: dict[str, Any], prefix: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"unknown runtime config key {path!r}",
                              "remove it or check the spelling against configs/kata-py.toml")
        default = getattr(cls(), key)
        if hasattr(default, "__dataclass_fields__"):
            if not isinstance(value, dict):
                raise ConfigError(f"runtime config {path!r} must be a table", "")
            values[key] = _build(type(default), value, f"{path}.")
            continue
        expected = type(default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            raise ConfigError(f"runtime config {path!r} must be a {expected.__name__}, "
                              f"not {value!r}", "")
        choices = _CHOICES.get(path)
        if choices and value not in choices:
            raise ConfigError(f"runtime config {path!r} is {value!r}",
                              f"use one of {', '.join(choices)}")
        values[key] = value
    return replace(cls(), **values)


def parse_config(text: str, origin: str = "<string>") -> RuntimeConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"runtime config {origin} is not valid TOML ({exc})",
                          "fix the syntax") from exc
    cfg: RuntimeConfig = _build(RuntimeConfig, data, "")
    if cfg.hypervisor.vcpus < 1 or cfg.hypervisor.memory_mib < 128:
        raise ConfigError(f"runtime config {origin}: hypervisor needs vcpus >= 1 and "
                          "memory_mib >= 128", "raise the values")
    return cfg


def load_config(path: str | None = None) -> RuntimeConfig:
    """The runtime config from path, $KATA_PY_CONFIG, the system file, or defaults."""
    chosen = path or os.environ.get(ENV_CONFIG)
    if chosen:
        try:
            return parse_config(Path(chosen).read_text(), chosen)
        except FileNotFoundError as exc:
            raise ConfigError(f"runtime config {chosen} does not exist",
                              f"create it, or name another ({ENV_CONFIG}, --config, "
                              "containerd's ConfigPath)") from exc
    if SYSTEM_CONFIG.exists():
        return parse_config(SYSTEM_CONFIG.read_text(), str(SYSTEM_CONFIG))
    return RuntimeConfig()
