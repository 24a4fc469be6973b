"""Fleets: hosts of devices as data, each device a place of its own, with the links that join them."""

from __future__ import annotations

from pathlib import Path

import pytest

from partitioner.errors import PartitionerError
from targets.fleet import builtin_fleet_names, load_fleet


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return str(path)


def test_the_shorthand_makes_one_host_with_a_place_per_device():
    targets = load_fleet("npu-example=2,cuda-h100=1").target_set()

    assert targets.names == ("npu-example.0", "npu-example.1", "cuda-h100")
    assert targets.fallback == "cuda-h100"
    assert targets.route("npu-example.0", "cuda-h100") == ("npu-example.0:out", "cuda-h100:in")


def test_two_gpus_of_one_host_use_their_peer_link_and_two_hosts_the_network():
    targets = load_fleet("two-hosts").target_set()

    assert targets.route("cuda-h100.0", "cuda-h100.1") == ("cuda-h100.0->cuda-h100.1",)
    assert targets.route("npu-example.3", "cuda-h100.0") == (
        "npu-example.3:out", "network:npu-node->gpu-node", "cuda-h100.0:in")
    network = 50e9
    assert targets.resources()["network:npu-node->gpu-node"] == network
    link = targets.link("npu-example.3", "cuda-h100.0")
    assert link.latency_seconds == pytest.approx(15e-6 + 10e-6 + 10e-6)


def test_a_shared_pcie_is_a_resource_every_copy_of_its_host_crosses(tmp_path):
    fleet = load_fleet(write(tmp_path, '[[hosts]]\nname = "box"\npcie_gb_per_second = 32\n'
                                       'devices = [{ target = "npu-example", count = 2 }, { target = "cuda-h100" }]\n'))

    targets = fleet.target_set()

    assert "box:pcie" in targets.route("npu-example.0", "cuda-h100")
    assert targets.resources()["box:pcie"] == 32e9


def test_every_builtin_fleet_loads():
    for name in builtin_fleet_names():
        assert len(load_fleet(name).target_set()) >= 2


def test_a_fleet_names_its_fallback_and_a_command_line_fallback_overrules_it():
    # l4-h100 lists its L4s first; by the loader's rule (the first CUDA spec that runs every op) one would be it.
    assert load_fleet("l4-h100").target_set().fallback == "cuda-h100"
    assert load_fleet("l4-h100").target_set("cuda-l4").fallback == "cuda-l4.0"


@pytest.mark.parametrize("text, message", [
    ("npu-example=0,cuda-h100=1", "count 0 is out of range. Fix: give between 1 and 4096 devices"),
    ("npu-example=two", "count 'two' is not a whole number"),
    ("nowhere-chip=2", "unknown target 'nowhere-chip'"),
    ("inf2-h10", "unknown fleet 'inf2-h10': did you mean 'inf2-h100'?"),
])
def test_a_bad_fleet_on_the_command_line_names_the_problem_and_the_fix(text, message):
    with pytest.raises(PartitionerError, match=message):
        load_fleet(text)


@pytest.mark.parametrize("text, message", [
    ('[[hosts]]\nname = "a"\ndevices = [{ target = "cuda-h100" }]\n[[hosts]]\nname = "b"\n'
     'devices = [{ target = "cuda-h100" }]\n', "field 'network': 2 hosts and no network between them"),
    ('[[hosts]]\ndevices = [{ target = "cuda-h100", count = -1 }]\n', "count -1 is out of range"),
    ('[[hosts]]\ndevices = [{ target = "cuda-h100", cuont = 2 }]\n', "unknown field. Fix: did you mean"),
    ('[[hosts]]\ndevices = [{ target = "tpu-v9" }]\n', "field 'hosts\\[0\\].devices\\[0\\].target'"),
    ('[[hosts]]\ndevices = []\n', "a host needs devices"),
    ('[[hosts]]\ndevices = [{ target = "cuda-h100", count = "2" }]\n', "expected a whole number, got '2'"),
    ('name = "empty"\n', "a fleet needs at least one host"),
    ('fallback = "cuda-a100"\n[[hosts]]\ndevices = [{ target = "cuda-h100" }]\n',
     "field 'fallback': 'cuda-a100' is not a device of this fleet. Fix: name one of cuda-h100"),
    ('fallback = "npu-example"\n[[hosts]]\ndevices = [{ target = "npu-example" }, { target = "cuda-h100" }]\n',
     "field 'fallback': fallback 'npu-example' does not support every op"),
])
def test_a_bad_fleet_file_names_the_file_the_field_and_the_fix(tmp_path, text, message):
    with pytest.raises(PartitionerError, match=message):
        load_fleet(write(tmp_path, text))
