"""Live tensor storage on one device, tracked while code runs: the measurement a memory plan is checked against.

`LiveStorage` is a dispatch mode: every tensor an operation returns on the tracked device adds its storage's
bytes once (views share a storage), and a finalizer on the storage takes them off when it is freed, so
`current` is what is alive and `peak` the most that ever was, optionally per named phase. Run on the meta
device it measures a real model at full size in seconds and no memory: meta tensors have shapes and
storages but no data.

Two things a meta run would get wrong are put right here:

- attention: the meta device has no fused kernel, so `scaled_dot_product_attention` decomposes into
  matmul + softmax and allocates the (queries x keys) score matrix, which no real run does (flash and
  memory-efficient kernels allocate the output and a log-sum-exp). `flash_attention()` makes it allocate
  exactly that while measuring.
- scalar reads: a meta tensor has no values, so code that branches on one (`if mask.all():`) cannot run.
  Within `scalar_reads(value)` every such read answers `value`; the caller says what real data would give.
- host memory: a meta tensor cannot be copied to the CPU. With `host_placeholders`, such a copy returns a
  zero-byte stand-in of the same shape (host memory is not what is measured), and copying the stand-in
  back allocates the full tensor on the device, as bringing a host cache in would.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

GIB = 1024**3


@dataclass
class Phase:
    """Bytes alive on the device when a phase first started, at its highest and when it last ended; `rise`:
    the most it ever rose above what was alive on entering it (a phase entered once per window or per
    forward keeps the largest)."""

    start: int
    peak: int
    end: int | None = None
    rise: int = 0
    _entered: int = 0


class LiveStorage(TorchDispatchMode):
    """Track the bytes of every tensor storage alive on `device` while the mode is active."""

    def __init__(self, device: torch.device | str = "meta", host_placeholders: bool = False):
        super().__init__()
        self.device = torch.device(device)
        self.host_placeholders = host_placeholders
        self.current = 0
        self.peak = 0
        self.phases: dict[str, Phase] = {}
        self._live: dict[int, int] = {}  # storage id -> bytes
        self._open: list[Phase] = []
        self._scalar = None  # what a scalar read of a meta tensor answers (None: it fails, as on meta)

    # -- what is counted ------------------------------------------------------------------------------
    def _on_device(self, t: torch.Tensor) -> bool:
        if t.device.type != self.device.type:
            return False
        return self.device.index is None or t.device.index == self.device.index

    def track(self, t: torch.Tensor) -> None:
        """Count `t`'s storage (once, however many views share it) until it is freed."""
        if not isinstance(t, torch.Tensor) or not self._on_device(t):
            return
        storage = t.untyped_storage()
        key, size = storage._cdata, storage.nbytes()
        old = self._live.get(key)
        if old is None:
            # Storages keep their Python object while any tensor uses them, so this fires when the memory goes.
            weakref.finalize(storage, self._release, key)
        self._live[key] = size
        self._grow(size - (old or 0))

    def adopt(self, *modules: torch.nn.Module) -> None:
        """Count the parameters and buffers already resident, tracked like any tensor from now on, so that a
        weight replaced while running (layerwise casting swaps storages) is counted once, not twice."""
        for m in modules:
            for t in (*m.parameters(), *m.buffers()):
                self.track(t)

    def _grow(self, n: int) -> None:
        self.current += n
        if self.current > self.peak:
            self.peak = self.current
        for p in self._open:
            if self.current > p.peak:
                p.peak = self.current
            if self.current - p._entered > p.rise:
                p.rise = self.current - p._entered

    def _release(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    # -- phases ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def phase(self, name: str):
        """Record the start, peak and end of what is alive while the block runs, under `name` (a phase
        entered again keeps its first start and its highest peak)."""
        p = self.phases.get(name)
        if p is None:
            p = self.phases[name] = Phase(self.current, self.current)
        p._entered = self.current
        self._open.append(p)
        try:
            yield p
        finally:
            self._open.remove(p)
            p.end = self.current

    @contextlib.contextmanager
    def scalar_reads(self, value):
        """Within the block, reading a scalar out of a meta tensor (`.item()`, `bool()`) answers `value`."""
        self._scalar = value
        try:
            yield
        finally:
            self._scalar = None

    # -- the dispatch hook ----------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._scalar is not None and func is torch.ops.aten._local_scalar_dense.default and args[0].is_meta:
            return self._scalar
        if self.host_placeholders and func is torch.ops.aten._to_copy.default:
            placeholder = _host_placeholder(args[0], kwargs)
            if placeholder is not None:
                return placeholder
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out


def _host_placeholder(t: torch.Tensor, kwargs: dict) -> torch.Tensor | None:
    """A zero-byte host stand-in for a copy of a meta tensor to the CPU (None for any other copy)."""
    target = kwargs.get("device")
    if t.device.type != "meta" or target is None or torch.device(target).type != "cpu":
        return None
    dtype = kwargs.get("dtype") or t.dtype
    return torch.empty((), dtype=dtype, device="cpu").expand(t.shape)


def resident_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers of `modules`, each storage counted once (tied weights, shared
    modules)."""
    seen: dict[int, int] = {}
    for m in modules:
        if m is None:
            continue
        for t in (*m.parameters(), *m.buffers()):
            s = t.untyped_storage()
            seen[s._cdata] = s.nbytes()
    return sum(seen.values())


# ---------------------------------------------------------------------------------------------------
# Flash-style attention while measuring
# ---------------------------------------------------------------------------------------------------


def _output_only_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
    """What a fused attention kernel allocates for inference: the output, laid out (..., queries, heads,
    dim) and returned transposed as flash attention returns it, and a float32 log-sum-exp per query that
    the caller drops at once. No (queries x keys) matrix."""
    *batch, heads, n_q, _ = query.shape
    out = query.new_empty((*batch, n_q, heads, value.shape[-1])).transpose(-3, -2)
    lse = query.new_empty((*batch, heads, n_q), dtype=torch.float32)
    del lse
    return out


@contextlib.contextmanager
def flash_attention():
    """Within the block, `F.scaled_dot_product_attention` allocates only what a fused kernel does (see the
    module docstring). Every attention here reaches it: diffusers' native backend, the Wan VAE's mid-block
    and UMT5's sdpa path all call it through the `torch.nn.functional` module."""
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _output_only_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
