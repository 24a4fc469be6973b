"""Fleets: the devices a plan may use, as data (hosts, devices of each target spec and a count, the links between).

A fleet file (TOML, validated like a target spec) or the one-host shorthand
`npu-example=4,cuda-h100=1` becomes a TargetSet with one target per device, a
*place* (`npu-example.0`, ... where a spec has several devices, the spec's name
where it has one), and a Topology: each place's host, each host's shared PCIe
bandwidth where given, and the network between hosts. Several devices of one
kind are distinct places, so a model can spread over two NPUs whose memory
neither holds alone. Built-in fleets live in targets/builtin/fleets/.

    name = "inf2-h100"
    fallback = "cuda-h100"            # optional: the spec whose first device runs what no other device runs
    [[hosts]]
    name = "node0"
    pcie_gb_per_second = 64           # optional: what all of this host's device links share
    devices = [{ target = "npu-example", count = 4 }, { target = "cuda-h100", count = 1 }]
    [network]                         # between hosts; required with more than one host
    bandwidth_gb_per_second = 50      # 400 Gb/s
    latency_microseconds = 10
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from partitioner.errors import PartitionerError
from partitioner.files import FLEET
from targets.loader import check_link_peers, choose_fallback, load_target
from targets.spec_reader import TomlReader, read_toml
from targets.spec import Link, Target, TargetSet, Topology

FLEETS_DIR = Path(__file__).parent / "builtin" / "fleets"
_MOST_DEVICES = 4096  # in a whole fleet, every host and kind together
_COUNT = re.compile(r"[0-9]+")  # ASCII digits only: int() also reads "2_0" as 20 and other scripts' digits


@dataclass(frozen=True, slots=True)
class DeviceGroup:
    """`count` devices of one target spec in one host."""

    target: Target
    count: int


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    devices: tuple[DeviceGroup, ...]
    pcie_bytes_per_second: float | None = None


@dataclass(frozen=True, slots=True)
class Fleet:
    """Hosts of devices and the network between them; `target_set` is what planning uses."""

    name: str
    hosts: tuple[Host, ...]
    network: Link | None = None
    fallback: str | None = None  # the fleet's own choice of fallback spec (else the loader's rule chooses)

    def target_set(self, fallback: str | None = None, most_of_each: int | None = None) -> TargetSet:
        """One target per device, named for its place; the fallback is the first place of the fallback spec
        (`fallback`, else the fleet's, else the first CUDA spec that runs every op).

        `most_of_each` keeps at most that many of each host's devices of one spec, and of hosts with the same
        devices (the first ones, named as in the whole fleet): they are interchangeable, and a model of N ops
        runs on N devices (so N hosts) at most, so planning on N of each loses nothing, and a fleet of thousands
        costs no more than N of each to plan."""
        totals = self.counts()
        numbered: dict[str, int] = {}
        places, host_of, spec_of = [], {}, {}
        hosts_of_a_kind: dict[tuple, int] = {}
        for host in self.hosts:
            # Hosts of the same devices reach each other over the one network: beyond so many, they are spares too.
            kind = (tuple((g.target.name, g.count) for g in host.devices), host.pcie_bytes_per_second)
            hosts_of_a_kind[kind] = hosts_of_a_kind.get(kind, 0) + 1
            spare = most_of_each is not None and hosts_of_a_kind[kind] > most_of_each
            for group in host.devices:
                for position in range(group.count):
                    index = numbered.setdefault(group.target.name, 0)
                    numbered[group.target.name] += 1
                    if spare or (most_of_each is not None and position >= most_of_each):
                        continue
                    name = group.target.name if totals[group.target.name] == 1 else f"{group.target.name}.{index}"
                    places.append(replace(group.target, name=name))
                    host_of[name], spec_of[name] = host.name, group.target.name
        specs = {t.name: t for host in self.hosts for t in (g.target for g in host.devices)}
        spec_fallback = choose_fallback(tuple(specs.values()), fallback or self.fallback)
        first = next(place.name for place in places if spec_of[place.name] == spec_fallback)
        topology = Topology(host_of, spec_of, self.network,
                            {h.name: h.pcie_bytes_per_second for h in self.hosts if h.pcie_bytes_per_second})
        return TargetSet(tuple(places), first, topology)

    def counts(self) -> dict[str, int]:
        """Devices per target spec, over all hosts."""
        counts: dict[str, int] = {}
        for host in self.hosts:
            for group in host.devices:
                counts[group.target.name] = counts.get(group.target.name, 0) + group.count
        return counts

    def describe(self, planned_on: int | None = None, ops: int | None = None) -> str:
        """`inf2-h100: 4 x npu-example + 1 x cuda-h100 in 1 host`, and, where a plan of `ops` ops was searched on
        only `planned_on` of its devices (`target_set`'s `most_of_each`), how many and why."""
        devices = " + ".join(f"{n} x {name}" for name, n in self.counts().items())
        described = f"{self.name}: {devices} in {len(self.hosts)} host{'s' if len(self.hosts) > 1 else ''}"
        total = sum(self.counts().values())
        if planned_on is None or planned_on == total:
            return described
        return (f"{described}; planned on {planned_on} of its {total} devices (the others are identical to these, "
                f"and a model of {ops} ops runs on {ops} devices of a kind at most)")


def builtin_fleet_names() -> list[str]:
    return sorted(path.stem for path in FLEETS_DIR.glob("*.toml"))


def load_fleet(text: str) -> Fleet:
    """A fleet from a built-in name, a .toml path, or the one-host shorthand `name=count,...`."""
    if "=" in text and not text.endswith(".toml"):
        return _shorthand(text)
    path = Path(text) if (text.endswith(".toml") or "/" in text) else FLEETS_DIR / f"{text}.toml"
    if not path.exists():
        close = difflib.get_close_matches(text, builtin_fleet_names(), n=1)
        raise PartitionerError(
            f"unknown fleet {text!r}: {f'did you mean {close[0]!r}? ' if close else ''}built-in fleets are "
            f"{', '.join(builtin_fleet_names())}; or give a .toml fleet file, or name=count pairs such as "
            "npu-example=4,cuda-h100=1.")
    data = read_toml(path, FLEET)
    if "hosts" not in data and ("kind" in data or "peak_tflops" in data):
        raise PartitionerError(f"{path} is a target spec (one device), not a fleet. Fix: give --fleet {path}=N for N "
                               f"of them on one host, or write a fleet file whose host lists it: devices = "
                               f'[{{ target = "{path}", count = N }}].')
    return _FleetReader(path, data).fleet()


def _shorthand(text: str) -> Fleet:
    groups = []
    for item in text.split(","):
        name, _, count = item.strip().partition("=")
        if not name.strip():
            raise PartitionerError(f"--fleet {text!r}: {item.strip()!r} names no target. Fix: write name=count pairs "
                                   "separated by commas, e.g. npu-example=4,cuda-h100=1.")
        group = DeviceGroup(load_target(name.strip()), _count(count.strip(), f"--fleet {item.strip()!r}"))
        if any(g.target == group.target for g in groups):  # two specs of one name: _checked says so
            raise PartitionerError(f"--fleet {text!r} lists {group.target.name} twice. Fix: give each target once, "
                                   "with its total count.")
        groups.append(group)
    return _checked(Fleet("fleet", (Host("host", tuple(groups)),)), f"--fleet {text!r}")


def _count(value: Any, where: str) -> int:
    number = int(value) if isinstance(value, int) and not isinstance(value, bool) else (
        int(value) if isinstance(value, str) and _COUNT.fullmatch(value) else None)
    if number is None:
        raise PartitionerError(f"{where}: count {value!r} is not a whole number. Fix: write it like 4.")
    if not 1 <= number <= _MOST_DEVICES:
        raise PartitionerError(f"{where}: count {number} is out of range. Fix: give between 1 and {_MOST_DEVICES} "
                               "devices (leave a kind out rather than give 0).")
    return number


def _checked(fleet: Fleet, where: str) -> Fleet:
    """`fleet`, after the checks that span its hosts: at most _MOST_DEVICES devices in all, one spec per target
    name (two spec files both named "x" would merge into one kind), and links that name known targets."""
    total = sum(fleet.counts().values())
    if total > _MOST_DEVICES:
        raise PartitionerError(f"{where}: {total} devices in all, more than {_MOST_DEVICES}. Fix: plan on at most "
                               f"{_MOST_DEVICES} devices.")
    specs: dict[str, Target] = {}
    for group in (g for host in fleet.hosts for g in host.devices):
        known = specs.setdefault(group.target.name, group.target)
        if known != group.target:
            raise PartitionerError(f"{where}: two different specs are named {group.target.name!r} "
                                   f"({known.spec_path} and {group.target.spec_path}). Fix: give each spec a name "
                                   "of its own.")
    check_link_peers(specs.values())
    return fleet


class _FleetReader(TomlReader):
    """Reads one parsed fleet file, checking each field as it goes."""

    def fleet(self) -> Fleet:
        self.check_known_fields(self.data, {"name", "description", "hosts", "network", "fallback"}, "")
        hosts_data = self.data.get("hosts")
        if not isinstance(hosts_data, list) or not hosts_data:
            raise self.fail("hosts", "a fleet needs at least one host", "add a [[hosts]] section with devices")
        hosts = tuple(self.host(index, host) for index, host in enumerate(hosts_data))
        names = [h.name for h in hosts]
        if len(set(names)) != len(names):
            raise self.fail("hosts", f"two hosts are named {next(n for n in names if names.count(n) > 1)!r}",
                            "give each host its own name")
        network = self.network() if "network" in self.data else None
        if len(hosts) > 1 and network is None:
            raise self.fail("network", f"{len(hosts)} hosts and no network between them",
                            "add [network] with bandwidth_gb_per_second and latency_microseconds")
        fallback = self.data.get("fallback")
        specs = {g.target.name for h in hosts for g in h.devices}
        if fallback is not None and fallback not in specs:
            raise self.fail("fallback", f"{fallback!r} is not a device of this fleet",
                            f"name one of {', '.join(sorted(specs))}")
        fleet = _checked(Fleet(str(self.data.get("name", self.path.stem)), hosts, network, fallback), str(self.path))
        try:
            fleet.target_set()
        except PartitionerError as error:
            raise self.fail("fallback", str(error).split(". Fix:")[0], "name a spec that runs every op")
        return fleet

    def host(self, index: int, data: Any) -> Host:
        where = f"hosts[{index}]"
        if not isinstance(data, dict):
            raise self.fail(where, "expected a table", "write it as a [[hosts]] section")
        self.check_known_fields(data, {"name", "devices", "pcie_gb_per_second"}, where + ".")
        devices = data.get("devices")
        if not isinstance(devices, list) or not devices:
            raise self.fail(f"{where}.devices", "a host needs devices",
                            'write devices = [{ target = "cuda-h100", count = 1 }]')
        groups = []
        for position, device in enumerate(devices):
            field = f"{where}.devices[{position}]"
            if not isinstance(device, dict) or "target" not in device:
                raise self.fail(field, "expected { target = NAME, count = N }", "name a target and a count")
            self.check_known_fields(device, {"target", "count"}, field + ".")
            try:
                target = load_target(str(device["target"]))
            except PartitionerError as error:
                if "Fix:" in str(error):  # the spec itself is wrong: its own fix is the one to give
                    raise PartitionerError(f"{self.path}: field '{field}.target': {error}") from None
                raise self.fail(f"{field}.target", str(error).rstrip("."), "name a built-in target or a .toml spec")
            count = device.get("count", 1)
            if not isinstance(count, int) or isinstance(count, bool):
                raise self.fail(f"{field}.count", f"expected a whole number, got {count!r}", "write it like 4")
            if any(g.target == target for g in groups):  # two specs of one name: _checked says so
                raise self.fail(f"{field}.target", f"{target.name} is listed twice in this host",
                                "list it once, with its total count")
            groups.append(DeviceGroup(target, _count(count, f"{self.path}: field '{field}.count'")))
        pcie = None
        if "pcie_gb_per_second" in data:  # a bandwidth like a link's, with the same plausible range
            pcie = self.number("pcie_gb_per_second", data, where + ".", exclusive_minimum=0.0,
                               plausible_as="bandwidth_gb_per_second") * 1e9
        return Host(str(data.get("name", f"host{index}")), tuple(groups), pcie)

    def network(self) -> Link:
        """The network between hosts, read as a spec's links are (latency optional here, zero by default)."""
        data = self.data["network"]
        return self.link({"latency_microseconds": 0.0, **data} if isinstance(data, dict) else data, "network")
