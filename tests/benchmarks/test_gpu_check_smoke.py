"""`benchmarks/gpu_check.py` on the CPU with a tiny model: the check a GPU machine runs, kept from rotting where
there is none. Each row's ratios are the spec's roofline over the profile's own times."""

from __future__ import annotations

import pytest
import torch

from cost_models.measured import op_signature
from cost_models.profile import DeviceIdentity, cached_profile
from cost_models.roofline import RooflineCostModel
from partitioner.frontend.capture import capture
from partitioner.frontend.op_graph import NodeKind, annotate
from targets.loader import load_target
from tests.benchmarks import benchmark_script


@pytest.fixture(scope="module")
def gpu_check():
    with benchmark_script("gpu_check") as module:
        yield module


def tiny(dtype: torch.dtype):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64),
                                torch.nn.LayerNorm(64)).to(dtype).eval()
    return capture(model, (torch.randn(32, 64, dtype=dtype),), name=f"tiny-{dtype}")


def test_the_device_check_compares_the_spec_and_its_calibration_per_model_dtype_and_op_class(gpu_check, tmp_path):
    captured = {("tiny", "float32"): tiny(torch.float32), ("tiny", "bfloat16"): tiny(torch.bfloat16)}
    target = load_target("cpu-x86")

    rows, described = gpu_check.check(captured, "cpu", target, tmp_path, min_run_seconds=0.005)

    by_label = {row.label: row for row in rows}
    assert {"tiny float32", "tiny bfloat16", "all float32", "all bfloat16", "all",
            "class matmul float32", "class normalization bfloat16"} <= set(by_label)
    compute = [n for n in annotate(captured["tiny", "float32"].program) if n.kind is NodeKind.COMPUTE]
    assert by_label["tiny float32"].ops == len(compute) == 4  # two linears, the GELU, the layer norm
    assert by_label["all"].ops == 8
    # The spec's ratios are its roofline over the times the profile holds.
    profile = cached_profile(tmp_path, DeviceIdentity.of("cpu"))
    ratios = sorted(RooflineCostModel().compute_seconds(n, target) / profile.ops[op_signature(n)].seconds
                    for n in compute)
    assert by_label["tiny float32"].spec.median == pytest.approx((ratios[1] + ratios[2]) / 2)
    assert "spec" in by_label["tiny float32"].run_error  # its ops' predicted sum against its measured run
    assert "whole profile" in described or "calibration refused" in described

    page = gpu_check.markdown(rows, described, "the CPU", target.name, 1.0)
    assert "| tiny float32 | 4 |" in page and "Goals (issue 30)" in page
