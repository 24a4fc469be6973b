"""Profiling a model on real devices: `partitioner profile` fills a profile folder from a captured model.

`profile_model` times every op signature of the model that the folder's
profile of each device lacks (cost_models/measured.py does the timing) and
probes the device's links; the profile files themselves are cost_models/profile.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from cost_models.measured import is_timed, measure_ops, measure_ops_in_model, op_signature, probe_links
from cost_models.profile import DeviceIdentity, Profile, cached_profile
from partitioner.execution.check import require_real_weights
from partitioner.frontend.capture import CapturedModel
from partitioner.frontend.op_graph import annotate


@dataclass(frozen=True, slots=True)
class ProfileRun:
    """What profiling one device did: the profile written, and how many op signatures it measured anew."""

    profile: Profile
    path: Path
    measured: int
    reused: int
    left_to_roofline: int


def profile_model(captured: CapturedModel, devices: Sequence[str], folder: Path, min_run_seconds: float = 0.05,
                  on_progress: Callable[[str, int, int], None] | None = None, in_model: bool = False
                  ) -> list[ProfileRun]:
    """Time every op signature of the model not yet in `folder`'s profile of each device, and probe its links.

    With `in_model`, every op is timed inside whole runs of the model instead (see `measure_ops_in_model`),
    replacing what the profile had for the model's signatures.
    """
    graph = annotate(captured.program)
    identities = [DeviceIdentity.of(device) for device in devices]  # fail on a missing device before any work
    runs = []
    for device, identity in zip(devices, identities):
        profile = cached_profile(folder, identity)
        signatures = {op_signature(node) for node in graph if is_timed(node)}
        reused = len(signatures & set(profile.ops))
        progress = (lambda done, total, d=device: on_progress(d, done, total)) if on_progress else None
        if in_model:
            require_real_weights(captured)
            measured, reused = measure_ops_in_model(captured.program, graph, captured.example_inputs, device), 0
        else:
            measured = measure_ops(captured.program, graph, device, known=profile.ops,
                                   min_run_seconds=min_run_seconds, on_progress=progress)
        profile = profile.with_ops(measured)
        if not profile.links:
            profile = profile.with_links(probe_links(device))
        path = profile.save(folder)
        runs.append(ProfileRun(profile, path, len(measured), reused, len(signatures) - reused - len(measured)))
    return runs
