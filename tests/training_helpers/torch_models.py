"""Randomly initialised torchvision models with BatchNorm statistics away from their (0, 1) defaults."""

from __future__ import annotations

import torch
import torchvision


def random_torchvision_model(arch: str, num_classes: int = 1000, seed: int = 0) -> torch.nn.Module:
    """``torchvision.models.<arch>`` in eval mode with random BatchNorm statistics and affine parameters."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(num_classes=num_classes).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.0)
                m.bias.normal_(0.0, 0.1)
    return model
