"""The organisers' baseline setup, for timing only: torchvision-style ResNet-50 without torchvision.

- :func:`resnet50`: ResNet-50 v1.5 (stride in the 3x3 convolution, as torchvision),
  25,557,032 parameters, random weights.
- :func:`organisers_preprocess`: PIL decode at full size (no draft mode), resize the
  shorter side to 256/224 of ``size`` (bilinear), center crop ``size``, ImageNet mean/std.

Used by ``contest/bench.py``'s ``baseline`` leg; weights do not matter for speed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, stride)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 convolutions with a residual; ``width * 4`` output channels."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(_conv_bn(cin, width, 1), nn.ReLU(inplace=True),
                                  _conv_bn(width, width, 3, stride), nn.ReLU(inplace=True),
                                  _conv_bn(width, cout, 1))
        self.down = _conv_bn(cin, cout, 1, stride) if (stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.down(x))


def resnet50(num_classes: int = 1000) -> nn.Sequential:
    """float32 (B, 3, H, W) -> logits float32 (B, num_classes); random weights."""
    layers = [_conv_bn(3, 64, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for width, blocks, stride in STAGES:
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def organisers_preprocess(path: Path, size: int = 224) -> np.ndarray:
    """Image file -> float32 (3, size, size): Resize(size*256/224) + CenterCrop(size) + Normalize."""
    with Image.open(path) as img:
        img = img.convert("RGB")
    short = round(size * 256 / 224)
    scale = short / min(img.size)
    img = img.resize((max(short, round(img.width * scale)), max(short, round(img.height * scale))),
                     Image.BILINEAR)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    return np.ascontiguousarray(((arr - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))
