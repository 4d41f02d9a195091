"""The embedded default: `shapes-wan`, a tiny Wan pretrained on the shapes world, and its edit adapter.

Both ship inside the package (`imvedit/assets/`), so the first `imvedit edit` works on a CPU with no
download. The untrained components are built here from `configs/pretrain.yaml`; `pretrain.py`
trains them and `configs/adapter.yaml` records how the bundled adapter was trained.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from ..models.bases import SHAPES_WAN, Base
from .world import DEFAULT_WORLD, vocabulary

CONFIGS = Path(__file__).resolve().parent / "configs"


def load_config(path: str | Path = CONFIGS / "pretrain.yaml") -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def word_tokenizer(model_max_length: int = 48, world: str = DEFAULT_WORLD) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the shapes world's vocabulary (instructions included): no download.

    Its `model_max_length` is the prompt length the toy base trains and runs with: the longest caption is
    about 25 tokens, and padding to Wan's 226 tripled the cost of a training step.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}  # noqa: S105 - tokens, not secrets
    for word in [*vocabulary(world), ",", ".", "'"]:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))  # noqa: S106
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",  # noqa: S106
        eos_token="</s>",  # noqa: S106
        unk_token="<unk>",  # noqa: S106
        model_max_length=model_max_length,
    )


def zero_past_taps(vae: AutoencoderKLWan) -> int:
    """Zero the taps of every 3D convolution's kernel that read earlier frames; returns how many convolutions.

    Every `Conv3d` of `AutoencoderKLWan` is causal (`WanCausalConv3d`): it pads its input with zeros (or, in a
    chunked clip, with the previous chunk's cached features) in front of the time axis only, so the last tap
    of a kernel's time axis reads the current frame and the others read earlier ones. With those zeroed, and
    nothing else in the VAE mixing frames (its RMS norm is per position, its attention per frame, and no
    temporal down- or upsampling is configured), a frame's latent in a clip is the frame's latent as an image.
    Trained on single frames, the zeroed taps only ever meet the zero padding, get zero gradient and stay zero.
    """
    convs = [m for m in vae.modules() if isinstance(m, torch.nn.Conv3d) and m.kernel_size[0] > 1]
    with torch.no_grad():
        for conv in convs:
            conv.weight[:, :, :-1].zero_()
    return len(convs)


def build_untrained(config: dict):
    """The toy base's five components, randomly initialised under the config's seed."""
    v, t, te = config["vae"], config["transformer"], config["text_encoder"]
    if v.get("frame_independent") and any(v["temperal_downsample"]):
        raise ValueError("vae.frame_independent needs temperal_downsample all false: compressing time mixes frames")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        tokenizer = word_tokenizer(world=config.get("world", DEFAULT_WORLD))
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(tokenizer),
                d_model=te["d_model"],
                d_kv=te["d_kv"],
                d_ff=te["d_ff"],
                num_layers=te["num_layers"],
                num_heads=te["num_heads"],
                relative_attention_num_buckets=16,
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
            )
        )
        patch = v.get("patch_size") or 1
        stride = patch * 2 ** (len(v["dim_mult"]) - 1)
        vae = AutoencoderKLWan(
            base_dim=v["base_dim"],
            in_channels=3 * patch * patch,
            out_channels=3 * patch * patch,
            patch_size=v.get("patch_size"),
            z_dim=v["z_dim"],
            dim_mult=v["dim_mult"],
            num_res_blocks=v["num_res_blocks"],
            temperal_downsample=v["temperal_downsample"],
            latents_mean=[0.0] * v["z_dim"],
            latents_std=[1.0] * v["z_dim"],
            scale_factor_spatial=stride,
            scale_factor_temporal=2 ** sum(v["temperal_downsample"]),
        )
        if v.get("frame_independent"):
            zero_past_taps(vae)
        transformer = WanTransformer3DModel(
            patch_size=tuple(t["patch_size"]),
            num_attention_heads=t["num_attention_heads"],
            attention_head_dim=t["attention_head_dim"],
            in_channels=v["z_dim"],
            out_channels=v["z_dim"],
            text_dim=te["d_model"],
            freq_dim=t["freq_dim"],
            ffn_dim=t["ffn_dim"],
            num_layers=t["num_layers"],
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=t["rope_max_seq_len"],
        )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=t["flow_shift"])
    size = config["size"]
    return Base(SHAPES_WAN, transformer, vae, text_encoder, tokenizer, scheduler, default_area=size * size)
