"""The curve-perception network G(curve, observed label; Theta) -> sample weight (docs/methods.md §2.4).

Architecture of the official ``net/curvenet.py`` (written from its description, not copied):

    curve c in R^D --Linear(D, 2P)-ReLU--Linear(2P, 2P)-ReLU--Linear(2P, P)--ReLU--> h
    h + m * E[y]            (E: K x P class embedding; m = 2 in the code, which adds it twice)
      --Linear(P, 2P)-ReLU--Linear(2P, P)-ReLU--Linear(P, 1)--> z
    w = factor * sigmoid(z) + bias      (factor 1, bias 0.02 in every released config)

The code's adaptive 1-D average pool to length P after the encoder is the identity on a P-vector
and is left out. Initialisation in the code's order: Kaiming-normal on every Linear weight, then
Xavier-normal on all six Linear weights (overwriting it), Xavier-uniform on the embedding, zero
biases everywhere except the head's first Linear (PyTorch's default uniform bias), and the final
bias set to 4.5, so that training starts with w = sigmoid(~4.5) + 0.02 ~ 1.009 for every sample.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CurveNet(nn.Module):
    def __init__(self, input_dim: int, num_classes: int, hidden: int = 64, factor: float = 1.0, bias: float = 0.02,
                 final_bias_init: float = 4.5, double_embedding: bool = True) -> None:
        super().__init__()
        if input_dim < 1 or hidden < 1:
            raise ValueError(f"CurveNet needs input_dim >= 1 and hidden >= 1, got {input_dim}, {hidden}")
        p = hidden
        self.input_dim, self.hidden = input_dim, hidden
        self.factor, self.bias = float(factor), float(bias)
        self.embedding_scale = 2.0 if double_embedding else 1.0
        # curve encoder D -> 2P -> 2P -> P
        self.enc1 = nn.Linear(input_dim, 2 * p)
        self.enc2 = nn.Linear(2 * p, 2 * p)
        self.enc3 = nn.Linear(2 * p, p)
        self.embedding = nn.Embedding(num_classes, p)
        # head P -> 2P -> P -> 1
        self.head1 = nn.Linear(p, 2 * p)
        self.head2 = nn.Linear(2 * p, p)
        self.head3 = nn.Linear(p, 1)
        self._init(final_bias_init)

    def _init(self, final_bias_init: float) -> None:
        linears = [self.enc1, self.enc2, self.enc3, self.head1, self.head2, self.head3]
        for m in linears:  # the code applies Kaiming first, then overwrites it with Xavier
            nn.init.kaiming_normal_(m.weight)
        nn.init.xavier_uniform_(self.embedding.weight)
        for m in linears:
            nn.init.xavier_normal_(m.weight)
        for m in (self.enc1, self.enc2, self.enc3, self.head2, self.head3):
            nn.init.zeros_(m.bias)
        nn.init.constant_(self.head3.bias, final_bias_init)

    def forward(self, curves: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Weights [B] for normalised curves [B, D] and observed labels [B]."""
        h = F.relu(self.enc1(curves))
        h = F.relu(self.enc2(h))
        h = F.relu(self.enc3(h))
        h = h + self.embedding_scale * self.embedding(labels)
        h = F.relu(self.head1(h))
        h = F.relu(self.head2(h))
        z = self.head3(h).squeeze(1)
        return self.factor * torch.sigmoid(z) + self.bias
