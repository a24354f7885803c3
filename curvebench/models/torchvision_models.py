"""ResNet-50 from torchvision for Clothing1M and Food-101N, with optional local pretrained weights."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from curvebench.models import register_model


@register_model("resnet50")
def resnet50(num_classes: int, in_channels: int = 3, init: str = "default", pretrained: str | None = None) -> nn.Module:
    """torchvision ResNet-50. ``pretrained`` is a local file with an ImageNet state dict (no
    download: clusters and CI are offline); its ``fc`` is replaced by a ``num_classes`` head."""
    from torchvision.models import resnet50 as tv_resnet50

    if in_channels != 3:
        raise ValueError("resnet50 expects 3-channel images")
    model = tv_resnet50(weights=None)
    if pretrained:
        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained weights {path} not found; put an ImageNet ResNet-50 state dict there "
                "(e.g. torchvision's resnet50-11ad3fa6.pth) or set model.pretrained=null"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    model.slmo_groups = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))  # type: ignore[attr-defined]
    model.classifier = "fc"  # type: ignore[attr-defined]
    model.feature_dim = model.fc.in_features  # type: ignore[attr-defined]
    return model
