"""The test zoo: real architectures from transformers configs, random weights, float32, small inputs.

Shared by the runtime and ONNX export tests, which check that placed models compute what the originals do.
"""

import torch


def resnet50():
    from transformers import ResNetConfig, ResNetForImageClassification

    return ResNetForImageClassification(ResNetConfig()).eval(), (torch.randn(1, 3, 64, 64),)


def bert_base():
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig()).eval(), {"input_ids": torch.randint(0, 30522, (1, 16))}


def small_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval(), {"input_ids": torch.randint(0, 256, (1, 12)), "use_cache": False}


ZOO = {"resnet50": resnet50, "bert-base": bert_base, "small-llama": small_llama}
