"""VM sizing: cgroup limits and annotations in, vCPUs and MiB out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kata_py import sizing
from kata_py.config import HypervisorConfig
from kata_py.errors import ConfigError
from kata_py.sizing import GUEST_OVERHEAD_MIB, VmSize, vm_size
from kata_py.spec import Spec, parse_spec

DEFAULTS = HypervisorConfig(vcpus=1, memory_mib=512)
GIB = 1024 * 1024 * 1024


@pytest.fixture(autouse=True)
def eight_host_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sizing.os, "cpu_count", lambda: 8)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    (tmp_path / "rootfs").mkdir()
    return tmp_path


def spec_with(bundle: Path, resources: dict[str, Any] | None = None,
              annotations: dict[str, str] | None = None) -> Spec:
    doc: dict[str, Any] = {"ociVersion": "1.2.0", "process": {"args": ["sh"], "cwd": "/"},
                           "root": {"path": "rootfs"}}
    if resources is not None:
        doc["linux"] = {"resources": resources}
    if annotations is not None:
        doc["annotations"] = annotations
    return parse_spec(doc, bundle)


def test_without_limits_the_runtime_defaults_apply(bundle: Path) -> None:
    assert vm_size(spec_with(bundle), DEFAULTS) == VmSize(vcpus=1, memory_mib=512)
    assert vm_size(spec_with(bundle), HypervisorConfig(vcpus=2, memory_mib=1024)) == VmSize(2, 1024)


def test_cpu_quota_rounds_up_to_whole_vcpus(bundle: Path) -> None:
    spec = spec_with(bundle, {"cpu": {"quota": 150000, "period": 100000}})
    assert vm_size(spec, DEFAULTS).vcpus == 2


def test_cpu_quota_of_exactly_one_period_is_one_vcpu(bundle: Path) -> None:
    spec = spec_with(bundle, {"cpu": {"quota": 100000, "period": 100000}})
    assert vm_size(spec, DEFAULTS).vcpus == 1


@pytest.mark.parametrize("cpu", [{"quota": -1, "period": 100000}, {"quota": 50000},
                                 {"period": 100000}, {"quota": 50000, "period": 0},
                                 {"shares": 1024}])
def test_unlimited_or_partial_cpu_limits_fall_back_to_the_default(
        bundle: Path, cpu: dict[str, int]) -> None:
    assert vm_size(spec_with(bundle, {"cpu": cpu}), HypervisorConfig(vcpus=3)).vcpus == 3


def test_vcpus_are_capped_at_the_host_cpu_count(bundle: Path) -> None:
    spec = spec_with(bundle, {"cpu": {"quota": 1600000, "period": 100000}})
    assert vm_size(spec, DEFAULTS).vcpus == 8


def test_default_vcpus_are_capped_at_the_host_cpu_count_too(
        bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sizing.os, "cpu_count", lambda: None)
    assert vm_size(spec_with(bundle), HypervisorConfig(vcpus=4)).vcpus == 1


def test_memory_limit_adds_the_guest_overhead(bundle: Path) -> None:
    spec = spec_with(bundle, {"memory": {"limit": GIB}})
    assert vm_size(spec, DEFAULTS).memory_mib == 1024 + GUEST_OVERHEAD_MIB


def test_memory_limit_rounds_up_to_whole_mib(bundle: Path) -> None:
    spec = spec_with(bundle, {"memory": {"limit": 20_000_000}})
    assert vm_size(spec, DEFAULTS).memory_mib == 20 + GUEST_OVERHEAD_MIB


@pytest.mark.parametrize("memory", [{"limit": -1}, {"limit": 0}, {"reservation": GIB}])
def test_unlimited_memory_falls_back_to_the_default(
        bundle: Path, memory: dict[str, int]) -> None:
    assert vm_size(spec_with(bundle, {"memory": memory}), DEFAULTS).memory_mib == 512


def test_podman_fixture_limits_size_the_vm(bundle: Path) -> None:
    data = json.loads((Path(__file__).parent / "fixtures/spec/podman.json").read_text())
    data["root"]["path"] = str(bundle / "rootfs")
    assert vm_size(parse_spec(data, bundle), DEFAULTS) == VmSize(2, 512 + GUEST_OVERHEAD_MIB)


def test_annotations_override_limits_and_defaults(bundle: Path) -> None:
    spec = spec_with(bundle, {"cpu": {"quota": 100000, "period": 100000},
                              "memory": {"limit": GIB}},
                     {"io.kata-py.vm.vcpus": "3", "io.kata-py.vm.memory_mib": "2048"})
    assert vm_size(spec, DEFAULTS) == VmSize(3, 2048)


def test_annotated_vcpus_are_capped_at_the_host_cpu_count(bundle: Path) -> None:
    spec = spec_with(bundle, annotations={"io.kata-py.vm.vcpus": "64"})
    assert vm_size(spec, DEFAULTS).vcpus == 8


@pytest.mark.parametrize(("name", "value", "minimum"), [
    ("io.kata-py.vm.vcpus", "two", 1),
    ("io.kata-py.vm.vcpus", "0", 1),
    ("io.kata-py.vm.vcpus", "-2", 1),
    ("io.kata-py.vm.vcpus", "1.5", 1),
    ("io.kata-py.vm.vcpus", "", 1),
    ("io.kata-py.vm.memory_mib", "64", 128),
    ("io.kata-py.vm.memory_mib", "1G", 128),
    ("io.kata-py.vm.memory_mib", " 512", 128),
])
def test_bad_size_annotations_are_rejected_by_name(
        bundle: Path, name: str, value: str, minimum: int) -> None:
    spec = spec_with(bundle, annotations={name: value})
    with pytest.raises(ConfigError) as caught:
        vm_size(spec, DEFAULTS)
    assert caught.value.message == (f"config.json: annotation {name} must be an integer of "
                                    f"at least {minimum}, not {json.dumps(value)}")


def test_a_cpuset_gets_the_vcpus_it_names_whatever_the_quota(bundle: Path) -> None:
    spec = spec_with(bundle, {"cpu": {"quota": 50000, "period": 100000, "cpus": "0-1"}})
    assert vm_size(spec, DEFAULTS).vcpus == 2
    spec = spec_with(bundle, {"cpu": {"cpus": "0,3"}})
    assert vm_size(spec, HypervisorConfig(vcpus=1)).vcpus == 4


@pytest.mark.parametrize(("cpus", "message"), [
    ("0-8", 'config.json: linux.resources.cpu.cpus "0-8" names CPU 8, and this host has 8 '
            "CPUs (0-7)"),
    ("0-x", 'config.json: linux.resources.cpu.cpus "0-x" is not a CPU list')])
def test_a_cpuset_the_host_cannot_give_is_refused(bundle: Path, cpus: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        vm_size(spec_with(bundle, {"cpu": {"cpus": cpus}}), DEFAULTS)
    assert exc.value.message == message
