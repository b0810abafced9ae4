"""An example user model: any nn.Module class (or a function returning one) will do."""

from __future__ import annotations

import math

from torch import nn


class ResidualMLP(nn.Module):
    """Flatten, project to ``hidden`` units, ``blocks`` residual MLP blocks, classify.

    Args:
        hidden: width of every block (model.args.hidden).
        blocks: residual blocks (model.args.blocks).
        dropout: before the classifier (model.args.dropout).
        num_classes: given by raytune-opt from the data set, because the signature names it.
        input_shape: one sample's shape, e.g. (1, 8, 8); given by raytune-opt too.
    """

    def __init__(self, hidden: int, num_classes: int, input_shape: tuple, blocks: int = 2, dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.ReLU()) for _ in range(blocks))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)
