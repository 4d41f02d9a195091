"""The training objective, written out in full: flow matching as Wan trains it, on one-frame videos.

Noise the target latents at a sampled sigma, `x_t = (1 - sigma) * x0 + sigma * noise`, and regress the
velocity `noise - x0`. The instruction is dropped with probability `text_dropout` (for text guidance)
and the source with `source_dropout` (for source guidance, as InstructPix2Pix does): a dropped source
is the all-zero latent, the same "no source" that the pipeline's source guidance uses.

With `gate_weight` > 0 the gate, averaged over blocks, is also pulled (binary cross-entropy) towards
each token's share of latent positions where the pair itself is edited: where the normalised source and target
latents differ by more than `EDIT_THRESHOLD` on average over the channels. Every image pair carries that
signal, so no mask is needed; pairs trained without their source or their instruction are left out of it (the
gate cannot know there), and so are pairs that change nearly every token (a global edit has no "where";
pulled open everywhere, the gate tinted "make it black and white"). A share rather than a yes/no per token:
a token the object's edge only grazes is pulled part of the way, not fully open, so the gate map's edge
follows the object's (docs/toy.md, seventh run). A threshold well above "any change": the VAE spreads an
edit's change, weaker, about one latent position past the object, and counted as edited that ring widened
the gate by a token all round (docs/toy.md, eighth run).

For a base with two experts (Wan2.2-A14B) each expert's adapter sees only its own part of the schedule:
`sigma_range` restricts the sigma distribution to it (high noise: sigma >= boundary_ratio, low: below),
by drawing u uniformly between the shift's inverses of the range's ends, so within the range the
distribution is the unrestricted one's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.imvedit import ImVideoEditTransformer

# Mean |target - source| over the channels of normalised latents (unit std per channel on Wan's VAEs) above
# which a whole token (`changed_tokens`) or a latent position (for telling global edits apart) counts as
# changed at all. On shapes-world pairs unchanged tokens stay below 0.03 (99th percentile) and changed ones
# above 0.12 (10th).
CHANGE_THRESHOLD = 0.05
# Above this a latent position is inside the edit (`changed_share`, the gate's target). The VAE spreads an
# edit about one latent position past the object, more weakly: at CHANGE_THRESHOLD that ring counted as
# edited, and the target itself scored gate_iou 0.41 against the pixel mask on 24 local bench clips (0.61 at
# 0.3, 0.71 at this threshold, 0.84 for an ideal per-token gate); positions wholly inside an edited object
# change by more than 0.6 (1st percentile). tests/benchmarks/probe_gate_target.py measures both.
EDIT_THRESHOLD = 0.5
# A pair whose share of latent positions changed at all (CHANGE_THRESHOLD) is at least this is a global edit:
# it gives the gate no target
GLOBAL_SHARE = 0.9


def changed_tokens(source_latents: torch.Tensor, target_latents: torch.Tensor, patch_size) -> torch.Tensor:
    """(batch, f', h', w') in {0, 1}: the transformer tokens whose latents differ between source and target."""
    per_token = F.avg_pool3d(mean_change(source_latents, target_latents), tuple(patch_size))[:, 0]
    return (per_token > CHANGE_THRESHOLD).float()


def changed_share(
    source_latents: torch.Tensor, target_latents: torch.Tensor, patch_size, threshold: float = EDIT_THRESHOLD
) -> torch.Tensor:
    """(batch, f', h', w') in [0, 1]: each transformer token's share of latent positions (of the patch_size
    positions it covers) whose latents differ by more than `threshold` between source and target: with the
    default, the gate's target."""
    return _token_share(mean_change(source_latents, target_latents) > threshold, patch_size)


def _token_share(positions: torch.Tensor, patch_size) -> torch.Tensor:
    """(batch, 1, f, h, w) booleans per latent position -> (batch, f', h', w'): each token's share of them."""
    return F.avg_pool3d(positions.float(), tuple(patch_size))[:, 0]


def mean_change(source_latents: torch.Tensor, target_latents: torch.Tensor) -> torch.Tensor:
    """(batch, 1, f, h, w): mean |target - source| over the channels, per latent position."""
    return (target_latents - source_latents).abs().float().mean(1, keepdim=True)


def _edit_weight(change: torch.Tensor | None, extra: float) -> torch.Tensor | None:
    """(batch, 1, f, h, w) from `mean_change`: 1 + `extra` on latent positions the pair changes at all
    (CHANGE_THRESHOLD), 1 elsewhere; None for no extra. The ring the VAE spreads past an edited object counts,
    so its outline does too."""
    if extra == 0:
        return None
    return 1.0 + extra * (change > CHANGE_THRESHOLD).float()


FULL_RANGE = (0.0, 1.0)
NO_MIX = (0.0, 1.0)  # (share, shift): no sample drawn at another shift


def shifted(u, shift):
    """Uniform u in [0, 1] mapped to sigma as Wan's scheduler shifts it (`shift` a number, or one per sample)."""
    return shift * u / (1 + (shift - 1) * u)


def _unshifted(sigma: float, shift: float) -> float:
    """The u that `shifted` maps to sigma."""
    return sigma / (shift - (shift - 1) * sigma)


def sample_sigmas(
    batch: int,
    shift: float,
    generator: torch.Generator,
    sigma_range: tuple[float, float] = FULL_RANGE,
    mix: tuple[float, float] = NO_MIX,
) -> torch.Tensor:
    """Uniform u in (0, 1) shifted towards high noise as Wan's scheduler is: shift*u / (1 + (shift-1)*u);
    with `sigma_range` = [low, high), that distribution restricted to the range. `mix` = (share, other shift):
    that share of the samples is drawn at the other shift instead (the draw made only for a share > 0, so runs
    without a mix keep their random streams)."""
    u = torch.rand(batch, generator=generator)
    share, other = mix
    if share > 0:
        shift = torch.where(torch.rand(batch, generator=generator) < share, float(other), float(shift))
    if tuple(sigma_range) == FULL_RANGE:
        return shifted(u, shift)
    low, high = sigma_range
    u_low, u_high = _unshifted(low, shift), _unshifted(high, shift)
    sigma = shifted(u_low + (u_high - u_low) * u, shift)
    # rounding may land on an end; the range's high end belongs to the other expert
    return sigma.clamp(low, torch.nextafter(torch.tensor(high), torch.tensor(low)).item())


def expert_sigma_range(expert: str, boundary_ratio: float) -> tuple[float, float]:
    """The sigmas an expert of a two-expert base denoises. Training's timestep is sigma * 1000, and Wan's
    schedulers have 1000 training timesteps, so diffusers' t >= boundary_ratio * 1000 is sigma >= boundary_ratio."""
    return (boundary_ratio, 1.0) if expert == "high" else (0.0, boundary_ratio)


def pick_expert(
    experts: tuple[str, ...], boundary_ratio: float | None, shift: float, generator, mix: tuple[float, float] = NO_MIX
) -> str:
    """The expert a step trains: the only one, or (both trained) the one whose range holds a sigma drawn
    from the run's distribution, so each expert gets the share of steps its part of the schedule has."""
    if len(experts) == 1:
        return experts[0]
    return "high" if sample_sigmas(1, shift, generator, mix=mix).item() >= boundary_ratio else "low"


def flow_matching_loss(
    model: ImVideoEditTransformer,
    *,
    source_latents: torch.Tensor,
    target_latents: torch.Tensor,
    text: torch.Tensor,
    gate_text: torch.Tensor,
    empty_text: torch.Tensor,
    empty_gate_text: torch.Tensor,
    generator: torch.Generator,
    text_dropout: float = 0.1,
    source_dropout: float = 0.05,
    shift: float = 3.0,
    forward=None,
    gate_weight: float = 0.0,
    gate_threshold: float = EDIT_THRESHOLD,
    sigma_range: tuple[float, float] = FULL_RANGE,
    edit_weight: float = 0.0,
    sigma_mix: tuple[float, float] = NO_MIX,
) -> torch.Tensor:
    """Loss of one batch. Latents: (batch, channels, frames, h, w); text: (batch, tokens, text_dim);
    gate_text: pooled (batch, text_dim). `forward` is the (possibly DDP-wrapped) model's call;
    `sigma_range` the part of the schedule the model's expert denoises. Every argument after the model is
    passed by name: by position, two latents of one shape, four text embeddings and three rates are easily swapped."""
    b = target_latents.shape[0]
    device, dtype = target_latents.device, target_latents.dtype
    supervise = gate_weight > 0
    # From the pair as given, before its source may be dropped (the gate term leaves dropped pairs out anyway);
    # only when a term reads it, so the plain loss does no extra pass over the latents
    change = mean_change(source_latents, target_latents) if edit_weight or supervise else None
    weight = _edit_weight(change, edit_weight)
    # All random draws come from one CPU generator so a run is reproducible on any device.
    drop_text = (torch.rand(b, generator=generator) < text_dropout).to(device)
    drop_source = (torch.rand(b, generator=generator) < source_dropout).to(device)
    sigma = sample_sigmas(b, shift, generator, sigma_range, sigma_mix).to(device, dtype)
    noise = torch.randn(target_latents.shape, generator=generator).to(device, dtype)

    text = torch.where(drop_text[:, None, None], empty_text.expand_as(text), text)
    gate_text = torch.where(drop_text[:, None], empty_gate_text.expand_as(gate_text), gate_text)
    source_latents = torch.where(
        drop_source[:, None, None, None, None], torch.zeros_like(source_latents), source_latents
    )

    features = model.encode_source(source_latents, empty_text)  # frozen, no gradient
    s = sigma.view(b, 1, 1, 1, 1)
    noisy = (1 - s) * target_latents + s * noise
    pred = (forward or model)(noisy, sigma * 1000.0, text, features, gate_text, collect_gates=supervise)
    if weight is None:
        loss = F.mse_loss(pred.float(), (noise - target_latents).float())
    else:
        loss = ((pred.float() - (noise - target_latents).float()).square() * weight).mean() / weight.mean()
    if supervise:
        changed = _token_share(change > gate_threshold, model.base.config.patch_size)
        touched = (change > CHANGE_THRESHOLD).flatten(1).float().mean(1)  # share of positions changed at all
        keep = ~(drop_text | drop_source) & (touched < GLOBAL_SHARE)
        if keep.any():
            gate = model.last_gate_map()[keep].clamp(1e-6, 1 - 1e-6)
            loss = loss + gate_weight * F.binary_cross_entropy(gate, changed[keep])
    return loss
