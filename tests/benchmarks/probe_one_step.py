"""Has an adapter learned its edits? A one-step probe on image pairs, in seconds instead of a bench run.

    python tests/benchmarks/probe_one_step.py PAIRS_DIR ADAPTER [--first 4000] [--count 96] [--sigma 1.0]

PAIRS_DIR is a folder made by `imvedit prepare ... --cache --model BASE` (the adapter's base). For pairs
`first` to `first + count - 1`, the target is noised to `sigma` and the model's one-step estimate of it,
`x0 = x_sigma - sigma * v`, is compared with the true target: the mean squared error of the normalised
latents inside the tokens the pair changes (flow_matching.changed_tokens). Copying the source is the
reference (printed too); an edit that the source and the instruction determine could be estimated near 0
at sigma 1. With the description of the result as the prompt and the instruction for the gate, as the
toy bench does. The same error over the tokens the pair leaves alone (`error_unchanged`, where copying the
source scores 0) says how much of the source the adapter carries through at that noise. Also the gate,
averaged over blocks, inside and outside the changed tokens: a gate that has found where the edit applies
opens inside and stays shut outside. Prints one JSON object, overall and per
pair `kind` when the manifest has one. Not a test.
"""

import argparse
import json
import sys

import torch

from imvedit.data.cache import CachedPairs
from imvedit.data.pairs import PairsDataset
from imvedit.models.adapter_file import load_adapter, read_adapter_metadata
from imvedit.models.bases import load_base
from imvedit.models.imvedit import ImVideoEditTransformer
from imvedit.training.flow_matching import changed_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs")
    parser.add_argument("adapter", help="an adapter .safetensors (e.g. RUN/adapter.safetensors)")
    parser.add_argument("--first", type=int, default=4000)
    parser.add_argument("--count", type=int, default=96)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    name = read_adapter_metadata(args.adapter)["base"]["name"]
    base = load_base(name, torch_dtype=torch.float32, components=("transformer", "scheduler"))
    adapter, _ = load_adapter(args.adapter, base.fingerprint)
    model = ImVideoEditTransformer(base.transformer, adapter)
    rows = PairsDataset(args.pairs).rows
    items = CachedPairs(args.pairs, rows)
    ids = list(range(args.first, min(args.first + args.count, len(rows))))
    if not ids:
        sys.exit(f"{args.pairs} has {len(rows)} pairs: give --first below that.")
    batch = items.collate([items[i] for i in ids])
    source, target = batch["source"], batch["target"]
    changed = changed_tokens(source, target, base.transformer.config.patch_size)
    pt, ph, pw = base.transformer.config.patch_size  # each token's mark spread over the latents it covers
    mask = changed.repeat_interleave(pt, 1).repeat_interleave(ph, 2).repeat_interleave(pw, 3)[:, None]

    def region_mse(estimate: torch.Tensor, where: torch.Tensor = mask) -> torch.Tensor:
        se = ((estimate - target) ** 2).mean(1, keepdim=True)
        return (se * where).flatten(1).sum(1) / where.flatten(1).sum(1).clamp(min=1)

    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(args.seed))
    noisy = (1 - args.sigma) * target + args.sigma * noise
    features = model.encode_source(source, items.empty_text.expand(len(ids), -1, -1))
    timestep = torch.full((len(ids),), 1000.0 * args.sigma)
    v = model(noisy, timestep, batch["caption"], features, batch["instruction_pooled"], collect_gates=True)
    gate = model.last_gate_map()
    estimate = noisy - args.sigma * v
    errors, copy, unchanged = region_mse(estimate), region_mse(source), region_mse(estimate, 1 - mask)
    kinds = [rows[i].get("kind") for i in ids]
    of_kind = {k: torch.tensor([x == k for x in kinds]) for k in sorted({k for k in kinds if k is not None})}
    per_kind = {k: round(errors[sel].mean().item(), 4) for k, sel in of_kind.items()}
    out = {"pairs": len(ids), "sigma": args.sigma, "error": round(errors.mean().item(), 4),
           "copy_source_error": round(copy.mean().item(), 4), "per_kind": per_kind,
           "error_unchanged": round(unchanged.mean().item(), 4)}  # fmt: skip
    if gate is not None:  # concat has no gate

        def mean_where(g: torch.Tensor, m: torch.Tensor) -> float | None:  # None where no token qualifies
            return round(((g * m).sum() / m.sum()).item(), 3) if m.sum() > 0 else None

        def inside_outside(sel: torch.Tensor) -> list[float | None]:
            return [mean_where(gate[sel], changed[sel]), mean_where(gate[sel], 1 - changed[sel])]

        out["gate_inside_outside"] = inside_outside(torch.ones(len(ids), dtype=torch.bool))
        out["gate_inside_outside_per_kind"] = {k: inside_outside(sel) for k, sel in of_kind.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
