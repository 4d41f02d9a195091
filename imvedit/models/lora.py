"""A low-rank update `x -> up(down(x))` whose `up` starts at zero, so it adds nothing until trained.

peft's LoRA layers wrap a `nn.Linear` in place, which would also change the frozen 3D attention that
the spatial difference attention shares its projections with. Here the frozen projection is computed
once and each branch only adds its own low-rank term, so a bare low-rank module is what fits.

`lora_sets` builds the adapter's sets of them, one per block (or per SDA branch), keyed by the layers they
update; `attention_projections` names the frozen layers an attention set's updates are added to.
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


# The projections of a diffusers attention block that a set of low-rank updates covers, by the names it uses.
ATTENTION = ("q", "k", "v", "o")


def lora_sets(names, shapes: dict[str, tuple[int, int]], rank: int) -> nn.ModuleDict:
    """One set of low-rank updates per name (a block's index, a branch): `sets[str(name)][layer]` is a
    `LowRank(in_features, out_features, rank)` for each `layer: (in_features, out_features)` of `shapes`.
    They are built in that order, name by name, so a seeded build draws the same initial weights."""
    return nn.ModuleDict(
        {str(n): nn.ModuleDict({p: LowRank(i, o, rank) for p, (i, o) in shapes.items()}) for n in names}
    )


def attention_shapes(dim: int) -> dict[str, tuple[int, int]]:
    """The shapes of an attention block's q, k, v and output projections, for `lora_sets`."""
    return dict.fromkeys(ATTENTION, (dim, dim))


def attention_projections(attn: nn.Module) -> dict[str, nn.Linear]:
    """The frozen linear layers of a diffusers attention block that `attention_shapes` names."""
    return dict(zip(ATTENTION, (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]), strict=True))
