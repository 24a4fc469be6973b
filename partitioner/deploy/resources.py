"""Which Ray resources stand for one device of a plan.

A device whose torch device type has a resource Ray knows asks for one of it
(`cuda` -> GPU, `hpu` -> HPU, `npu` -> NPU, `xla`/`neuron` -> neuron_cores); any
other device asks for a custom resource named after its target spec, e.g.
`npu-example`, which the nodes that have such devices declare
(`ray start --resources='{"npu-example": 4}'`).
"""

from __future__ import annotations

from typing import Iterable, Mapping

from partitioner.plan_records import TargetRecord

KNOWN_RESOURCES = {"cuda": "GPU", "hpu": "HPU", "npu": "NPU", "xla": "neuron_cores", "neuron": "neuron_cores"}


def resource_of(target: TargetRecord) -> str:
    """The name of the Ray resource one device of `target` takes."""
    return KNOWN_RESOURCES.get(target.torch_device.split(":")[0], target.spec_name)


def resources_needed(targets: Iterable[TargetRecord]) -> dict[str, int]:
    """How many of each resource the devices `targets` take together."""
    needed: dict[str, int] = {}
    for target in targets:
        needed[resource_of(target)] = needed.get(resource_of(target), 0) + 1
    return needed


def missing_resources(needed: Mapping[str, int], available: Mapping[str, float]) -> dict[str, tuple[int, float]]:
    """The resources a cluster has too few of: name -> (needed, available)."""
    return {name: (count, available.get(name, 0.0)) for name, count in needed.items()
            if available.get(name, 0.0) < count}


def actor_options(resource: str) -> dict:
    """Ray actor options that reserve one device's resource (GPUs are asked for as `num_gpus`)."""
    if resource == "GPU":
        return {"num_cpus": 0, "num_gpus": 1}
    return {"num_cpus": 0, "resources": {resource: 1}}


def bundle(resource: str) -> dict[str, float]:
    """A placement group bundle for one device."""
    return {resource: 1}
