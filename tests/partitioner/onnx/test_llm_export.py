"""export on an LLM plan: each phase at each size the plan serves, one ONNX file per partition for its device in
a folder of its own, the KV cache passed in and returned updated; run in order by ONNX Runtime, a decode step's
files give the logits and the cache the model's own program gives."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils import _pytree as pytree

from partitioner.execution.llm_phases import as_planned, phase_inputs
from partitioner.frontend.capture import capture
from partitioner.onnx.chained_runner import ChainedOnnxModel
from partitioner.onnx.llm_export import LLM_MANIFEST_NAME, export_llm_plan

pytestmark = pytest.mark.filterwarnings("ignore:CUDAExecutionProvider")


def test_each_phase_exports_one_file_per_partition_and_a_decode_step_computes_what_the_model_does(
        pipeline_plan, tmp_path):
    model, plan = pipeline_plan

    phases = export_llm_plan(plan, model, tmp_path / "onnx")

    listed = json.loads((tmp_path / "onnx" / LLM_MANIFEST_NAME).read_text())
    assert [(p["phase"], p["size"], p["folder"]) for p in listed["phases"]] == [("prefill", 6, "prefill-6"),
                                                                                ("decode", 2, "decode-2")]
    decode = phases[-1]
    assert {partition.target for partition in decode.manifest.partitions} == set(plan.best.devices["decode"])
    with as_planned(plan, model) as inputs:
        example = phase_inputs(inputs, "decode", 2, plan.workload.context_tokens)
        for layer in example["past_key_values"].layers:  # a cache of values: zeros would hide a wrong read
            layer.keys.normal_()
            layer.values.normal_()
        program = capture(model, example, "decode").program
        flat = [value.clone() if isinstance(value, torch.Tensor) else value
                for value in pytree.tree_leaves(example)]
        expected = pytree.tree_leaves(program.module()(**example))
    runner = ChainedOnnxModel(tmp_path / "onnx" / "decode-2")
    given = dict(zip(runner.input_names, (value.numpy() for value in flat if isinstance(value, torch.Tensor))))

    got = runner.run(given)

    assert len(got) == len(expected)
    for produced, wanted in zip(got, expected):  # the logits, then every cache tensor as updated
        np.testing.assert_allclose(produced, wanted.detach().numpy(), rtol=1e-4, atol=1e-5)
