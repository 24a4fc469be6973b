"""A small Llama-style decoder (4 layers, hidden 256) in bfloat16, random weights.

    partitioner compile examples/tiny_llama.py -o out/
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def build():
    config = LlamaConfig(
        hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=4, vocab_size=4096, max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    input_ids = torch.randint(0, config.vocab_size, (1, 64))
    return model, {"input_ids": input_ids, "use_cache": False}
