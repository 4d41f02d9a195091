"""Device memory of the Wan VAE (`AutoencoderKLWan`) encoding or decoding a clip, from its config alone.

The VAE runs causally in time: the encoder takes the first frame, then chunks of 4; the decoder one latent
frame at a time. Every causal convolution keeps its input's last 2 frames for the next chunk (the "feature
cache"), so once the first chunks are through, what is alive at any moment is

    all the feature caches + what the callers up the stack hold + the working set of the layer running,

and the peak is where the working set is largest: a residual block's 3x3x3 convolution at the highest
resolution, whose input is concatenated with its 2 cached frames and then padded (two copies of 6 frames
next to the block's input, its activation and the new cache). Each term below follows diffusers'
`autoencoder_kl_wan.py` (0.42) line by line; `measure.py` checks the sum against the real module run on
the meta device. The VAE runs in fp32 (imvedit loads it so). With tiling the clip is cut into 256-pixel
tiles (stride 192), each run through the VAE alone, and the decoded tiles are all kept until they are
blended and joined, so the join at the end can be the peak.
"""

from __future__ import annotations

from dataclasses import dataclass

FP32 = 4
CACHE_T = 2  # frames each causal convolution keeps (diffusers' CACHE_T)
TILE, TILE_STRIDE = 256, 192  # diffusers' tile_sample_min_* and tile_sample_stride_* (pixels)


@dataclass(frozen=True)
class VaeShape:
    """The parts of the config the memory depends on, with diffusers' defaults (Wan2.1's VAE)."""

    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    is_residual: bool = False
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int | None = None
    scale_factor_spatial: int = 8

    @classmethod
    def from_config(cls, config: dict) -> VaeShape:
        known = {k: v for k, v in config.items() if k in cls.__dataclass_fields__ and v is not None}
        for k in ("dim_mult", "temperal_downsample"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(**known)

    @property
    def patch(self) -> int:
        return self.patch_size or 1


class _Walk:
    """What one chunk's pass through a stack of layers keeps and peaks at, resolution by resolution.

    `caches`: bytes of every causal convolution's cache (2 frames of its input). `peak`: the largest
    working set seen, including what the enclosing blocks hold while it runs (`held`)."""

    def __init__(self, frames: int):
        self.frames = frames  # frames of a steady-state chunk at the current level
        self.caches = 0
        self.peak = 0
        self.held = 0

    def see(self, working: int) -> None:
        self.peak = max(self.peak, self.held + working)

    def cache(self, channels: int, area: int, frames: int = CACHE_T) -> int:
        c = channels * frames * area * FP32
        self.caches += c
        return c

    def resnet(self, c_in: int, c_out: int, hw: tuple[int, int]) -> None:
        """`WanResidualBlock`: shortcut, RMS norm, SiLU, causal conv (twice), residual add."""
        area = hw[0] * hw[1]
        pad = (hw[0] + 2) * (hw[1] + 2) / area  # the 3x3 spatial zero padding F.pad adds
        s_in, s_out = c_in * self.frames * area * FP32, c_out * self.frames * area * FP32
        shortcut = s_out if c_in != c_out else 0  # a 1x1 conv, else the input itself
        base = s_in + shortcut  # the block's input and its shortcut live to the end
        for s, c in ((s_in, self.cache(c_in, area)), (s_out, self.cache(c_out, area))):
            self.see(base + 3 * s)  # RMS norm: the activation, normalized * scale, * gamma
            cat = c + s  # [cache | chunk], then F.pad copies it with the spatial border
            self.see(base + s + c + cat + cat * pad)  # activation + new cache + cat + padded
            self.see(base + s + c + cat * pad + s_out)  # ... + the conv's output, cat freed
        self.see(base + 2 * s_out)  # x + h

    def resample(self, c: int, c_out: int, hw: tuple[int, int], up: bool, temporal: bool) -> tuple[int, int]:
        """`WanResample`: a causal time conv (upsample3d: before, doubling the frames), a per-frame copy, then a
        2x nearest upsample + 3x3 conv (or a zero pad + stride-2 conv down; downsample3d: a time conv after).
        Its input stays alive throughout (the caller's `x`). Returns the new (height, width)."""
        area = hw[0] * hw[1]
        x_in = c * self.frames * area * FP32
        if up and temporal:
            cache = self.cache(c, area)
            cat = cache + x_in
            self.see(x_in + cache + 2 * cat + 2 * x_in)  # [cache | x], F.pad's copy, the conv's 2c channels
            self.see(x_in + 2 * x_in + 2 * x_in)  # the two halves stacked into 2f frames
            self.frames *= 2
        frames = x_in * (2 if up and temporal else 1)  # the frames as one batch of images (a copy)
        if up:
            out_hw = (hw[0] * 2, hw[1] * 2)
            out = c_out * self.frames * out_hw[0] * out_hw[1] * FP32
            self.see(x_in + frames + 4 * frames + out)  # the copy, its nearest upsample, the conv's output
            return out_hw
        out_hw = (hw[0] // 2, hw[1] // 2)
        down = c * self.frames * out_hw[0] * out_hw[1] * FP32
        padded = c * self.frames * (hw[0] + 1) * (hw[1] + 1) * FP32
        self.see(x_in + frames + padded + down)
        if temporal:  # [last frame | x], F.pad's copy, the stride-2 conv's half as many frames
            cat = down * (self.frames + 1) // self.frames
            self.see(down + self.cache(c, out_hw[0] * out_hw[1], frames=1) + 2 * cat + down // 2)
            self.frames = max(1, self.frames // 2)
        return out_hw


def _encoder_pass(v: VaeShape, hw: tuple[int, int], held: int) -> _Walk:
    """One steady-state chunk (4 frames) through `WanEncoder3d`."""
    walk = _Walk(4)
    walk.held = held
    c_in = v.in_channels  # already the patchified channels (Wan2.2: 3 x 2 x 2)
    dims = [v.base_dim * u for u in (1, *v.dim_mult)]
    walk.cache(c_in, hw[0] * hw[1])  # conv_in
    last = len(v.dim_mult) - 1
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        block_in = a * walk.frames * hw[0] * hw[1] * FP32
        if v.is_residual:
            walk.held += block_in  # `x_copy = x.clone()` for the average-pool shortcut
        c = a
        for r in range(v.num_res_blocks):
            walk.resnet(c, b, hw)
            if r == 0 and v.is_residual:  # the caller's x (the block's input) is kept for the block
                walk.held += block_in
            c = b
        if i != last:
            temporal = v.temperal_downsample[i] if not v.is_residual or i != last else False
            new_hw = walk.resample(b, b, hw, up=False, temporal=temporal)
            if v.is_residual:  # AvgDown3D: pad, a permuted copy and the mean, beside the block's output
                walk.see(3 * block_in + b * walk.frames * new_hw[0] * new_hw[1] * FP32)
            hw = new_hw
        if v.is_residual:
            walk.held -= 2 * block_in
    _mid_and_out(walk, dims[-1], hw)
    return walk


def _decoder_pass(v: VaeShape, hw: tuple[int, int], held: int) -> _Walk:
    """One steady-state chunk (1 latent frame, 4 output frames) through `WanDecoder3d`."""
    walk = _Walk(1)
    walk.held = held
    dim = v.decoder_base_dim or v.base_dim
    dims = [dim * u for u in (v.dim_mult[-1], *v.dim_mult[::-1])]
    walk.cache(v.z_dim, hw[0] * hw[1])  # conv_in
    _mid_and_out(walk, dims[0], hw, head=False)
    upsample = v.temperal_downsample[::-1]
    last = len(v.dim_mult) - 1
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        if i > 0 and not v.is_residual:
            a //= 2  # the previous upsampler halved the channels
        block_in = a * walk.frames * hw[0] * hw[1] * FP32
        if v.is_residual:
            walk.held += block_in  # `x_copy = x.clone()` for the DupUp3D shortcut
        c = a
        for r in range(v.num_res_blocks + 1):
            walk.resnet(c, b, hw)
            if r == 0:  # from here on the caller's x (the block's input) is not the resnet's input
                walk.held += block_in
            c = b
        if i != last:
            temporal = upsample[i]
            new_hw = walk.resample(b, b if v.is_residual else b // 2, hw, up=True, temporal=temporal)
            if v.is_residual:  # DupUp3D: repeat_interleave, a permuted copy, then x + shortcut
                out = b * walk.frames * new_hw[0] * new_hw[1] * FP32
                walk.see(4 * out)
            hw = new_hw
        walk.held -= block_in * (2 if v.is_residual else 1)
    head = dims[-1]
    s = head * walk.frames * hw[0] * hw[1] * FP32
    cache = walk.cache(head, hw[0] * hw[1])  # conv_out
    walk.see(s + cache + 2 * (cache + s))
    return walk


def _mid_and_out(walk: _Walk, c: int, hw: tuple[int, int], head: bool = True) -> None:
    """The mid block (two residual blocks around a per-frame attention, small at latent size) and, for the
    encoder, the head's causal conv."""
    walk.resnet(c, c, hw)
    walk.resnet(c, c, hw)
    if head:
        walk.cache(c, hw[0] * hw[1])


def _tiles(size: int, stride: int, tile: int) -> list[int]:
    return [min(tile, size - i) for i in range(0, size, stride)]


def encode_bytes(v: VaeShape, frames: int, height: int, width: int, tiling: bool) -> int:
    """Peak bytes above the VAE's weights while `vae.encode(x).latent_dist.mode()` runs on the device, the
    fp32 input clip included (the pipeline moves it there first)."""
    clip = v.in_channels // v.patch**2 * frames * height * width * FP32
    hw = (height // v.patch, width // v.patch)
    patched = clip if v.patch > 1 else 0  # patchify's permuted copy lives through the encode
    if tiling and (hw[0] > TILE or hw[1] > TILE):
        tile = (min(TILE, hw[0]), min(TILE, hw[1]))
        walk = _encoder_pass(v, tile, clip + patched)
    else:
        walk = _encoder_pass(v, hw, clip + patched)
    return walk.caches + walk.peak


def decode_bytes(v: VaeShape, latent_frames: int, height: int, width: int, tiling: bool) -> int:
    """Peak bytes above the VAE's weights while `vae.decode(z)` runs, for `latent_frames` latent frames of
    a `height` x `width` clip."""
    out_frames = 4 * (latent_frames - 1) + 1
    s = v.scale_factor_spatial
    lat = (height // s, width // s)
    up = s // v.patch  # the decoder's own upsampling; patch_size folds the rest into channels
    frame = v.out_channels * (lat[0] * up) * (lat[1] * up) * FP32  # one decoded frame (patchified for 2.2)
    tile_lat = TILE // s
    if not tiling or (lat[0] <= tile_lat and lat[1] <= tile_lat):
        # the output so far (all but the last chunk) is kept while the last chunk decodes
        walk = _decoder_pass(v, lat, (out_frames - 4) * frame)
        joined = 2 * out_frames * frame  # the last cat beside its parts, then the clamp's copy beside it
        return walk.caches + max(walk.peak, joined)
    stride_lat = TILE_STRIDE // s
    rows = [h * up for h in _tiles(lat[0], stride_lat, tile_lat)]
    cols = [w * up for w in _tiles(lat[1], stride_lat, tile_lat)]
    per_pixel = v.out_channels * out_frames * FP32
    tiles = sum(rows) * sum(cols) * per_pixel  # every decoded tile, kept until the join
    out = per_pixel * (height // v.patch) * (width // v.patch)
    walk = _decoder_pass(v, (min(tile_lat, lat[0]), min(tile_lat, lat[1])), tiles)
    # the join: beside the tiles, the blended rows joined, then the whole joined and clamped (for Wan2.2 the
    # join is unpatchified first, and freed as its unpatchified copy takes its place)
    join = tiles + 3 * out
    return max(walk.caches + walk.peak, join)
