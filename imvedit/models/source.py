"""The frozen source stream of one video, as the edit passes read it.

`encode_source` (`ImVideoEditTransformer`) runs the stream once and returns `SourceFeatures`: one `BlockSource`
per block with SDA, each holding what that block's edit pass reads of the source. `RecomputedSource` is the
other choice (`--source-cache recompute`): no cache, the stream runs again inside every edit forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class BlockSource:
    """The frozen source stream's tokens at one block. Training keeps the raw form (`mod`, `k`, `v`: attn1's
    input and its frozen key/value projections, before norm), because the branches that read it change
    every step; inference keeps `kv` instead, each branch's source keys and values already through its
    low-rank update, norm and rotary (`SpatialDifferenceAttention.source_kv`), so a step spends nothing on
    the source. `ln` (the layer-normed block input) feeds the gate and the aligned term in both."""

    ln: torch.Tensor
    mod: torch.Tensor | None = None
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    kv: tuple[torch.Tensor, torch.Tensor] | None = None  # (branches, batch*f, hw, heads, head_dim) each

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.ln, self.mod, self.k, self.v, *(self.kv or ())) if t is not None]

    def frames(self, f0: int, f1: int, f: int) -> BlockSource:
        """Latent frames [f0, f1) of `f`: views where the layout allows (a batch-1 source)."""
        n = self.ln.shape[1] // f  # tokens per frame
        tokens = lambda t: None if t is None else t[:, f0 * n : f1 * n]  # noqa: E731
        kv = None
        if self.kv is not None:  # (branches, batch*f, ...): frames are the inner part of the second axis
            kv = tuple(t.unflatten(1, (-1, f))[:, :, f0:f1].flatten(1, 2) for t in self.kv)
        return BlockSource(tokens(self.ln), tokens(self.mod), tokens(self.k), tokens(self.v), kv)

    def to(self, device, non_blocking: bool = False, pin: bool = False) -> BlockSource:
        def move(t):
            if t is None:
                return None
            t = t.to(device, non_blocking=non_blocking)
            return t.pin_memory() if pin else t

        kv = None if self.kv is None else (move(self.kv[0]), move(self.kv[1]))
        return BlockSource(move(self.ln), move(self.mod), move(self.k), move(self.v), kv)

    def stored(self, device: torch.device) -> BlockSource:
        """Moved to where the cache keeps it; host memory is pinned (page-locked) when there is a GPU to copy
        it back to, so those copies can overlap compute."""
        return self.to(device, pin=device.type == "cpu" and torch.cuda.is_available())


@dataclass
class SourceFeatures:
    """The frozen source stream of one video (batch, usually 1), computed once and reused for every step,
    guidance branch and prompt: one `BlockSource` per SDA block. For concat and the two-way stream, whose
    edit pass reads the source itself, no blocks and only `latents`. The blocks may live on another device
    than the model (`--source-cache cpu`: host memory): `block(i, device)` brings each in as its block runs
    and, on CUDA, the next one meanwhile on a side stream."""

    blocks: dict[int, BlockSource]  # block index -> its source; empty when the edit pass reads `latents`
    grid: tuple[int, int, int]  # the source's latent token grid (frames, height, width)
    latents: torch.Tensor | None = None  # (batch, c, f, h, w): the clean source latents (concat, two-way)
    _prefetched: dict[int, BlockSource] = field(default_factory=dict, repr=False)  # copies under way, by block

    @property
    def batch_size(self) -> int:
        if self.latents is not None:
            return self.latents.shape[0]
        return next(iter(self.blocks.values())).ln.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for b in self.blocks.values() for t in b.tensors())

    def check_serves(self, rows: int) -> None:
        """A source of batch k serves a latents batch of m * k rows (e.g. the guidance branches share one)."""
        if rows % self.batch_size:
            raise ValueError(f"source batch {self.batch_size} does not divide latents batch {rows}")

    def block(self, i: int, device: torch.device) -> BlockSource:
        here = self._prefetched.pop(i, None)
        if here is None:
            here = self.blocks[i].to(device)
        else:
            torch.cuda.current_stream(device).wait_stream(_side_stream(device))
            for t in here.tensors():  # used on the main stream: not reused before that work is done
                t.record_stream(torch.cuda.current_stream(device))
        later = [j for j in self.blocks if j > i]
        if device.type == "cuda" and later and self.blocks[later[0]].ln.device != device:
            with torch.cuda.stream(_side_stream(device)):
                self._prefetched[later[0]] = self.blocks[later[0]].to(device, non_blocking=True)
        return here

    def release_prefetched(self) -> None:
        self._prefetched.clear()


@dataclass
class RecomputedSource:
    """No cache (`--source-cache recompute`): the source stream runs again inside every edit forward, as
    extra rows of its batch (clean latents at t = 0 with the empty prompt), and each block reads it there."""

    latents: torch.Tensor  # (1, c, f, h, w): the clean source latents
    empty_text: torch.Tensor  # (1, tokens, text_dim): the empty prompt's embeddings


def source_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """A source tensor for n rows of target: a batch of 1 broadcasts as it is; a batch of k (per-frame: one row
    per frame) repeats to n = m * k rows, in the order the rows are stacked (m branches of k)."""
    return t if t.shape[0] in (1, n) else t.repeat(n // t.shape[0], *[1] * (t.ndim - 1))


_SIDE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """One CUDA stream per device for the copies of the next block's source, beside the compute."""
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    return _SIDE_STREAMS[device]
