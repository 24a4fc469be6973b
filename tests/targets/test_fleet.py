"""Fleets: hosts of devices as data, each device a place of its own, with the links that join them."""

from __future__ import annotations

import re
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
    ("npu-example=2_0,cuda-h100=1", "count '2_0' is not a whole number"),  # int() reads it as 20
    ("npu-example=\u0663,cuda-h100=1", "is not a whole number"),  # an Arabic-Indic three, which int() reads
    ("cuda-h100=4096,cuda-h100=4096", "lists cuda-h100 twice. Fix: give each target once, with its total count"),
    ("npu-example=4000,cuda-h100=100", "4100 devices in all, more than 4096"),
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
    ('[[hosts]]\nname = "a"\ndevices = [{ target = "npu-example" }]\n[[hosts]]\nname = "b"\n'
     'devices = [{ target = "cuda-h100" }]\n[network]\nbandwidth_gb_per_second = 1e300\n',
     "field 'network.bandwidth_gb_per_second': 1e\\+300 GB/s is not a plausible figure"),
    ('[[hosts]]\npcie_gb_per_second = 1e-9\ndevices = [{ target = "npu-example" }, { target = "cuda-h100" }]\n',
     "field 'hosts\\[0\\].pcie_gb_per_second': 1e-09 GB/s is not a plausible figure"),
    ('[[hosts]]\ndevices = [{ target = "cuda-h100", count = 4000 }]\n[[hosts]]\nname = "b"\n'
     'devices = [{ target = "cuda-h100", count = 100 }]\n[network]\nbandwidth_gb_per_second = 10\n',
     "4100 devices in all, more than 4096"),
    ('[[hosts]]\ndevices = [{ target = "cuda-h100" }, { target = "cuda-h100" }]\n',
     "cuda-h100 is listed twice in this host. Fix: list it once, with its total count"),
])
def test_a_bad_fleet_file_names_the_file_the_field_and_the_fix(tmp_path, text, message):
    with pytest.raises(PartitionerError, match=message):
        load_fleet(write(tmp_path, text))


def spec_named(tmp_path: Path, file: str, name: str, links: str = "", price: str = "0.76") -> str:
    """A copy of the example NPU's spec under another name (and price), with `links` appended."""
    text = (Path(__file__).resolve().parents[2] / "targets" / "builtin" / "npu-example.toml").read_text()
    text = re.sub(r'(?m)^name = .*$', f'name = "{name}"', text, count=1)
    text = re.sub(r"(?m)^price_per_hour = .*$", f"price_per_hour = {price}", text, count=1)
    path = tmp_path / file
    path.write_text(text + links)
    return str(path)


def test_two_different_specs_of_one_name_are_refused_rather_than_merged(tmp_path):
    first, second = spec_named(tmp_path, "a.toml", "chip"), spec_named(tmp_path, "b.toml", "chip", price="9.5")

    with pytest.raises(PartitionerError, match="two different specs are named 'chip'.*Fix: give each spec a name"):
        load_fleet(f"{first}=1,{second}=1,cuda-h100=1")
    with pytest.raises(PartitionerError, match="two different specs are named 'chip'"):
        load_fleet(write(tmp_path, f'[[hosts]]\nname = "a"\ndevices = [{{ target = "{first}" }}, '
                                   f'{{ target = "cuda-h100" }}]\n[[hosts]]\nname = "b"\n'
                                   f'devices = [{{ target = "{second}" }}]\n[network]\nbandwidth_gb_per_second = 10\n'))


def test_a_fleets_spec_with_a_link_to_a_target_nobody_names_is_refused(tmp_path):
    spec = spec_named(tmp_path, "chip.toml", "chip", "\n[links.cuda-h1000]\nbandwidth_gb_per_second = 50\n"
                                                    "latency_microseconds = 10\n")

    with pytest.raises(PartitionerError, match=r"field 'links.cuda-h1000': no target is named 'cuda-h1000'.*"
                                               r"did you mean 'cuda-h100'\?"):
        load_fleet(f"{spec}=2,cuda-h100=1")


def test_a_fleet_spec_named_like_an_installed_plug_in_target_is_refused(tmp_path):
    spec = spec_named(tmp_path, "acme.toml", "acme-npu")

    with pytest.raises(PartitionerError, match="'acme-npu' is the name of a target of the installed plug-in"):
        load_fleet(f"acme-npu=1,{spec}=1,cuda-h100=1")


def test_a_device_spec_given_as_a_fleet_says_how_to_make_a_fleet_of_it():
    spec = Path(__file__).resolve().parents[2] / "examples" / "llm" / "cpu-small.toml"

    with pytest.raises(PartitionerError, match=r"is a target spec \(one device\), not a fleet. Fix: give --fleet "):
        load_fleet(str(spec))
    fleet = load_fleet(f"{spec}=2")  # the fix it gives

    assert fleet.target_set().names == ("cpu-small.0", "cpu-small.1")
