"""Built-in specs of real devices: each cites its figures, dates its price, and takes what its vendor says it takes.

Whether a whole Llama layer can leave CUDA is the question a user asks of a chip before buying it, so each spec is
checked against a small Llama in bf16 and fp16 (`partitioner targets coverage`'s figures).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from partitioner.frontend.capture import capture
from partitioner.frontend.op_graph import annotate
from partitioner.reporting.coverage import coverage
from targets.fleet import load_fleet
from targets.loader import builtin_target_names, load_target

EXAMPLES = {"npu-example", "dsp-example"}
REAL_DEVICES = [name for name in builtin_target_names() if name not in EXAMPLES]
# Accelerators whose op lists name every op of a Llama layer, and chips without bf16.
WHOLE_LLAMA = {"inf2", "trn2", "gaudi2", "gaudi3"}
NO_BFLOAT16 = {"qaic-ai100"}


def header(name: str) -> str:
    """The comment lines that open a spec file: where its figures come from."""
    lines = Path(load_target(name).spec_path).read_text().splitlines()
    return "\n".join(line for line in lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))])


@pytest.mark.parametrize("name", REAL_DEVICES)
def test_every_real_device_spec_cites_its_sources_and_dates_its_price(name):
    text = header(name)

    assert re.search(r"datasheet|documentation|docs|https?://|guide|specification", text, re.IGNORECASE), name
    price = text[text.index("Price"):]
    assert re.search(r"20[12]\d", price), f"{name}: the price is not dated"


def test_the_examples_stay_examples():
    assert EXAMPLES <= set(builtin_target_names())
    assert all("xample" in load_target(name).description for name in EXAMPLES)


@pytest.fixture(scope="module")
def llama_graphs():
    config = LlamaConfig(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1024, max_position_embeddings=128)
    graphs = {}
    for dtype in (torch.bfloat16, torch.float16):
        with torch.device("meta"):
            model = LlamaForCausalLM(config).to(dtype).eval()
        inputs = {"input_ids": torch.zeros(1, 32, dtype=torch.long, device="meta"), "use_cache": False}
        graphs[dtype] = annotate(capture(model, inputs).program)
    return graphs


@pytest.mark.parametrize("name", sorted(WHOLE_LLAMA))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_graph_compiling_accelerators_take_every_flop_of_a_llama(llama_graphs, name, dtype):
    (covered,) = coverage(llama_graphs[dtype], [load_target(name)])

    assert covered.supported_flops == covered.total_flops, covered.refusals[:3]
    if name.startswith("gaudi"):  # Intel's list gives new_ones no bool: the causal mask is built elsewhere
        assert [(r.reason.split(":")[0], r.ops) for r in covered.refusals] == [("aten.new_ones.default", 1)]
    else:
        assert covered.supported_ops == covered.total_ops, covered.refusals[:3]


@pytest.mark.parametrize("name", sorted(NO_BFLOAT16))
def test_a_chip_without_bfloat16_takes_an_fp16_llama_but_no_bf16_matmul(llama_graphs, name):
    (fp16,) = coverage(llama_graphs[torch.float16], [load_target(name)])
    (bf16,) = coverage(llama_graphs[torch.bfloat16], [load_target(name)])

    assert fp16.flop_share > 0.95
    assert bf16.supported_flops == 0
    assert "dtype bfloat16 not supported" in bf16.refusals[0].reason


@pytest.mark.parametrize("fleet", ["neuron-inf2-h100", "neuron-trn2-h100"])
def test_real_accelerator_fleets_load_with_the_h100_as_fallback(fleet):
    targets = load_fleet(fleet).target_set(None)

    assert targets.fallback == "cuda-h100"
    assert len({targets.topology.spec_of[name] for name in targets.names}) == 2
