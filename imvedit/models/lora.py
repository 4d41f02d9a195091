"""A low-rank update `x -> up(down(x))` whose `up` starts at zero, so it adds nothing until trained.

peft's LoRA layers wrap a `nn.Linear` in place, which would also change the frozen 3D attention that
the spatial difference attention shares its projections with. Here the frozen projection is computed
once and each branch only adds its own low-rank term, so a bare low-rank module is what fits.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LowRank(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        # Kaiming-uniform down (as nn.Linear and peft do) and a zero up: the product is exactly zero.
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))
