"""A deployment's device workers: which of them did not run on their own hardware."""

from __future__ import annotations

from partitioner.deploy.worker import emulated_places
from partitioner.plan_records import TargetRecord


def place(name: str, kind: str, torch_device: str) -> TargetRecord:
    return TargetRecord(name, kind, "", torch_device, "CPUExecutionProvider", "")


def test_a_target_that_is_not_a_cpu_is_emulated_wherever_its_worker_ran_on_the_cpu():
    """Trainium2's spec names the torch device `cpu` because no torch device exists for it here: its workers ran on
    the CPU in place of the chip, as a CUDA target's worker does on a machine without a GPU. A CPU target's did not."""
    targets = [place("trn2.0", "npu", "cpu"), place("gaudi3", "hpu", "cpu"), place("cuda-h100", "gpu", "cuda"),
               place("cuda-l4", "gpu", "cuda"), place("cpu-x86", "cpu", "cpu")]
    devices = {"trn2.0": "cpu", "gaudi3": "cpu", "cuda-h100": "cpu", "cuda-l4": "cuda:0", "cpu-x86": "cpu"}

    assert emulated_places(devices, targets) == ["cuda-h100", "gaudi3", "trn2.0"]
