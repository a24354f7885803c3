"""Wide ResNet (Zagoruyko & Komodakis), pre-activation blocks; WRN-16-8 for CurveNet's Table 6."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from curvebench.models import register_model
from curvebench.models.init import apply_init, curvenet_conv_bn_init


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.equal = in_planes == planes and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(in_planes, planes, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = F.relu(self.bn2(y))
        if self.dropout > 0:
            y = F.dropout(y, p=self.dropout, training=self.training)
        y = self.conv2(y)
        return y + (x if self.equal else self.shortcut(o))  # type: ignore[misc]


class WideResNet(nn.Module):
    slmo_groups = (("conv1",), ("block1",), ("block2",), ("block3",))
    classifier = "fc"

    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        assert (depth - 4) % 6 == 0, "WRN depth must be 6n+4"
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        stages, in_planes = [], widths[0]
        for i, width in enumerate(widths[1:]):
            blocks = [PreActBlock(in_planes if j == 0 else width, width, (1 if i == 0 else 2) if j == 0 else 1, dropout)
                      for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            in_planes = width
        self.block1, self.block2, self.block3 = stages
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.feature_dim = widths[3]
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():  # the WRN reference init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@register_model("wrn16_8")
def wrn16_8(num_classes: int, in_channels: int = 3, init: str = "curvenet", dropout: float = 0.0) -> WideResNet:
    """WRN-16-8. ``init=curvenet`` applies CurveNet's conv/BN re-init on top (docs/methods.md §1.8)."""
    model = WideResNet(16, 8, num_classes, in_channels, dropout)
    if init == "curvenet":
        curvenet_conv_bn_init(model)  # on top of the WRN reference init, as CurveNet does
    elif init not in ("default", "kaiming"):
        apply_init(model, init)
    return model
