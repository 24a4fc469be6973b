"""A small convolutional image classifier in float16, batch of 8, random weights; pure PyTorch.

The convolution backbone is work a cheap accelerator takes well; the attention
pooling head (layer norm, softmax) needs the fallback.

    partitioner compile examples/vision_classifier.py --objective cost -o out/
"""

import torch
from torch import nn


class ConvBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(torch.relu(self.conv2(torch.relu(self.conv1(x)))))


class VisionClassifier(nn.Module):
    def __init__(self, num_classes: int = 1000, width: int = 64):
        super().__init__()
        self.backbone = nn.Sequential(
            ConvBlock(3, width), ConvBlock(width, 2 * width), ConvBlock(2 * width, 4 * width),
            ConvBlock(4 * width, 8 * width),
        )
        self.norm = nn.LayerNorm(8 * width)
        self.attention = nn.MultiheadAttention(8 * width, num_heads=8, batch_first=True)
        self.classifier = nn.Linear(8 * width, num_classes)

    def forward(self, images):
        features = self.backbone(images).flatten(2).transpose(1, 2)  # (batch, tokens, channels)
        tokens = self.norm(features)
        pooled, _ = self.attention(tokens[:, :1], tokens, tokens, need_weights=False)
        return torch.softmax(self.classifier(pooled[:, 0]), dim=-1)


def build():
    torch.manual_seed(0)
    model = VisionClassifier().to(torch.float16).eval()
    return model, (torch.randn(8, 3, 224, 224, dtype=torch.float16),)
