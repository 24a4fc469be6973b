"""A Llama with 7B-parameter shape (hidden 4096, 32 layers) on the meta device, bfloat16.

No weights are allocated: planning needs only shapes.

    partitioner compile examples/llama_7b.py --targets npu-example,cuda-h100 -o out/llama7b
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def build(num_layers: int = 32):
    config = LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=num_layers, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    input_ids = torch.zeros(1, 512, dtype=torch.long, device="meta")
    return model, {"input_ids": input_ids, "use_cache": False}


def build_four_layers():
    """Four layers of the 7B shape: a quick model for planning on fleets."""
    return build(4)
