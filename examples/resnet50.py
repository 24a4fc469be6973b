"""ResNet-50 (transformers' ResNet, random weights) in float16 on a 224x224 image; `build_float32` and
`build_bfloat16` for CPUs.

    partitioner compile examples/resnet50.py --targets npu-example,dsp-example,cuda-h100 -o out/resnet50
    partitioner profile examples/resnet50.py:build_float32 --device cpu --report
"""

import torch
from transformers import ResNetConfig, ResNetForImageClassification


def build():
    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig()).to(torch.float16).eval()
    return model, (torch.randn(1, 3, 224, 224, dtype=torch.float16),)


def build_float32():
    model, (image,) = build()
    return model.float(), (image.float(),)


def build_bfloat16():
    model, (image,) = build()
    return model.to(torch.bfloat16), (image.to(torch.bfloat16),)
