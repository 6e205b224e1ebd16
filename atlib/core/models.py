"""Models that take [0, 1] pixels and normalise inside, so attacks and ε live in pixel space.

``mlp`` and ``small_cnn`` are CPU-sized (stride-2 convolutions instead of pooling: fewer FLOPs per
image at 28x28); ``preact_resnet18`` is the CIFAR-stem PreActResNet-18 of the robust-overfitting line
of work (Rice et al. 2020), the paper-scale model. ``linear`` is the softmax-regression model of the
theory chapter.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
import torch.nn.functional as F

ARCHS = ("linear", "mlp", "small_cnn", "preact_resnet18")


class Normalize(nn.Module):
    """(x - mean) / std per channel, as a layer."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def mlp(in_shape: tuple[int, int, int], num_classes: int, width: int = 128) -> nn.Module:
    c, h, w = in_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, num_classes))


def small_cnn(in_shape: tuple[int, int, int], num_classes: int, width: int = 16) -> nn.Module:
    """Two stride-2 3x3 convolutions (width, 2·width channels), a hidden layer of 128, no BatchNorm."""
    c, h, w = in_shape
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    h4, w4 = (h2 + 1) // 2, (w2 + 1) // 2
    return nn.Sequential(
        nn.Conv2d(c, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(2 * width * h4 * w4, 128), nn.ReLU(), nn.Linear(128, num_classes))


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        sc = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + sc


class PreActResNet18(nn.Module):
    """PreActResNet-18 with the CIFAR stem (3x3 conv, no max-pool)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 64):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        layers, cin = [], width
        for i, n in enumerate((2, 2, 2, 2)):
            cout = width * 2 ** i
            for j in range(n):
                layers.append(PreActBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn, self.fc = nn.BatchNorm2d(cin), nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def build_model(arch: str, in_shape: tuple[int, int, int], num_classes: int, mean: Sequence[float],
                std: Sequence[float], width: int | None = None) -> nn.Module:
    """``Normalize`` followed by the named network; ``width`` overrides the architecture's default."""
    if arch == "linear":
        c, h, w = in_shape
        net: nn.Module = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))
        return net  # the theory chapter's linear model works on raw pixels: no normalisation layer
    if arch == "mlp":
        net = mlp(in_shape, num_classes, width or 128)
    elif arch == "small_cnn":
        net = small_cnn(in_shape, num_classes, width or 16)
    elif arch == "preact_resnet18":
        net = PreActResNet18(in_shape[0], num_classes, width or 64)
    else:
        raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHS)}")
    return nn.Sequential(Normalize(mean, std), net)
