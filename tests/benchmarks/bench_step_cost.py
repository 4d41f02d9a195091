"""Cost of one denoising step: ImVideoEdit (source features cached) vs the plain base step.

    python tests/benchmarks/bench_step_cost.py [--config wan2.1-1.3b|tiny] [--layers N] [--frames F] [--hw H W]

Both run on the same random-weight WanTransformer3DModel, same inputs, interleaved, in one process;
the result is the ratio of median times (this machine is shared and noisy: only ratios are reported).
Not a test.
"""

import argparse
import json
import statistics
import time

import torch
from diffusers import WanTransformer3DModel

from imvedit.models.imvedit import ImVideoEditAdapter, ImVideoEditTransformer

CONFIGS = {
    "wan2.1-1.3b": dict(
        patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
    ),
    "tiny": dict(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=8, out_channels=8,
        text_dim=64, freq_dim=64, ffn_dim=512, num_layers=4, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=256,
    ),
}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    p.add_argument("--layers", type=int, default=None, help="fewer blocks for a quicker run (the ratio is per block)")
    p.add_argument("--frames", type=int, default=5, help="latent frames")
    p.add_argument("--hw", type=int, nargs=2, default=(16, 16), help="latent height and width")
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    cfg = dict(CONFIGS[args.config])
    if args.layers:
        cfg["num_layers"] = args.layers
    torch.manual_seed(0)
    base = WanTransformer3DModel(**cfg).eval().requires_grad_(False)
    adapter = ImVideoEditAdapter.for_base(base)
    with torch.no_grad():
        for prm in adapter.parameters():  # non-zero weights: no shortcut through zero-initialised maps
            prm.normal_(0, 0.02)
    g = torch.Generator().manual_seed(0)
    shape = (2, cfg["in_channels"], args.frames, *args.hw)  # batch 2: the two guidance branches
    x, src = torch.randn(shape, generator=g), torch.randn(shape[:1] and (1, *shape[1:]), generator=g)
    text = torch.randn(2, 64, cfg["text_dim"], generator=g)
    t = torch.tensor([500.0, 500.0])
    model = ImVideoEditTransformer(base, adapter)
    with torch.no_grad():
        features = model.encode_source(src, torch.zeros(1, 64, cfg["text_dim"])).repeat(2)
        pooled = torch.randn(2, cfg["text_dim"], generator=g)
        plain_t, edit_t = [], []
        for i in range(args.repeat + 1):
            t0 = time.perf_counter()
            base(x, t, text, return_dict=False)  # a direct base call: the hooks stay in plain mode
            t1 = time.perf_counter()
            model(x, t, text, features, pooled)
            t2 = time.perf_counter()
            if i:  # the first round warms up
                plain_t.append(t1 - t0)
                edit_t.append(t2 - t1)
    tokens = args.frames * args.hw[0] * args.hw[1] // 4
    print(json.dumps({
        "config": args.config, "layers": cfg["num_layers"], "tokens_per_video": tokens, "threads": torch.get_num_threads(),
        "plain_step_s": round(statistics.median(plain_t), 4), "imvedit_step_s": round(statistics.median(edit_t), 4),
        "ratio": round(statistics.median(edit_t) / statistics.median(plain_t), 3),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
