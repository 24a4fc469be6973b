"""BERT-base (random weights) in float16 on one 128-token sequence; `build_float32` and `build_bfloat16` for CPUs.

    partitioner compile examples/bert_base.py --objective cost -o out/bert
    partitioner profile examples/bert_base.py:build_float32 --device cpu --report
"""

import torch
from transformers import BertConfig, BertModel


def build():
    torch.manual_seed(0)
    model = BertModel(BertConfig()).to(torch.float16).eval()
    input_ids = torch.randint(0, 30522, (1, 128))
    return model, {"input_ids": input_ids}


def build_float32():
    model, inputs = build()
    return model.float(), inputs


def build_bfloat16():
    model, inputs = build()
    return model.to(torch.bfloat16), inputs
