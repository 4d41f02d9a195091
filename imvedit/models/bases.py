"""Base models: a diffusers-format Wan folder, a hub id, or the built-in `tiny-random`.

Every base goes through `load_base`, which loads each component with its own diffusers or
transformers class from the layout of `Wan-AI/Wan2.1-T2V-1.3B-Diffusers` (`model_index.json` +
`transformer/ vae/ text_encoder/ tokenizer/ scheduler/`). `tiny-random` is built in memory from the
same classes with small configs, under a fixed seed, so two processes build bit-identical weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from transformers import AutoTokenizer, PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from ..errors import ImveditError, UsageError

TINY_RANDOM = "tiny-random"
SHAPES_WAN = "shapes-wan"  # the bundled toy base, pretrained on the shapes world (imvedit/toy)
ASSETS = Path(__file__).resolve().parents[1] / "assets"
SHAPES_WAN_DIR = ASSETS / SHAPES_WAN  # diffusers layout
SHAPES_WAN_ADAPTER = ASSETS / "shapes-wan-edit.safetensors"  # its edit adapter, trained on image pairs only
BUILTIN_BASES = (SHAPES_WAN, TINY_RANDOM)

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class Base:
    """A loaded base: its five components and its identity."""

    name: str  # what the user passed: a builtin name, a folder or a hub id
    transformer: WanTransformer3DModel
    vae: AutoencoderKLWan | None
    text_encoder: UMT5EncoderModel | None
    tokenizer: PreTrainedTokenizerFast | None
    scheduler: object
    # The working resolution `imvedit edit` picks for this base, in pixels.
    default_area: int = 480 * 832
    # Sampling defaults for `imvedit edit` on this base.
    default_steps: int = 30
    default_guidance: float = 5.0
    # Frames the model sees at once (4k + 1); longer videos are edited in overlapping windows.
    window_frames: int = 81
    window_overlap: int = 16

    @property
    def fingerprint(self) -> str:
        return config_fingerprint(self.transformer.config)

    @property
    def identity(self) -> dict:
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "transformer_config": _public_config(self.transformer.config),
        }


def bundle_available() -> bool:
    """Whether the embedded default (the shapes-wan base and its adapter) ships with this build."""
    return (SHAPES_WAN_DIR / "model_index.json").is_file() and SHAPES_WAN_ADAPTER.is_file()


def _public_config(config) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}


def config_fingerprint(config) -> str:
    """A short hash of the transformer's architecture: an adapter only fits a base with the same one."""
    blob = json.dumps(_public_config(config), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# tiny-random
# ---------------------------------------------------------------------------------------------------


def byte_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer that needs no download: 3 special tokens + 256 bytes, no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=model_max_length
    )


def build_tiny_random(seed: int = 0) -> Base:
    """A tiny, randomly initialised Wan from the real classes (about 0.1M parameters in all)."""
    z_dim = 4
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=z_dim,
            out_channels=z_dim,
            text_dim=16,
            freq_dim=32,
            ffn_dim=32,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        )
        vae = AutoencoderKLWan(
            base_dim=8,
            z_dim=z_dim,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
            latents_mean=[0.0] * z_dim,
            latents_std=[1.0] * z_dim,
        )
        tokenizer = byte_tokenizer()
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(tokenizer),
                d_model=16,
                d_kv=8,
                d_ff=32,
                num_layers=1,
                num_heads=2,
                relative_attention_num_buckets=8,
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
            )
        )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    for m in (transformer, vae, text_encoder):
        m.eval()
    return Base(TINY_RANDOM, transformer, vae, text_encoder, tokenizer, scheduler, default_area=32 * 32)


# ---------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------


def _scheduler_class(path: str, subfolder: str):
    import diffusers

    # Any scheduler class reads scheduler_config.json; its _class_name says which one to build.
    config = FlowMatchEulerDiscreteScheduler.load_config(path, subfolder=subfolder)
    cls = getattr(diffusers, config.get("_class_name", ""), None)
    if cls is None:
        raise ImveditError(f"Unknown scheduler class {config.get('_class_name')!r} in {path}/{subfolder}.")
    return cls


def load_base(
    name: str,
    *,
    torch_dtype: torch.dtype | None = None,
    components: tuple[str, ...] = COMPONENTS,
) -> Base:
    """Load a base by name. `components` limits what is loaded (e.g. no VAE when latents are cached)."""
    if name == SHAPES_WAN:
        if not (SHAPES_WAN_DIR / "model_index.json").is_file():
            raise UsageError(
                "This build of imvedit does not include the bundled toy base shapes-wan.",
                "Pass --model with a diffusers Wan folder or hub id, or 'tiny-random' for a smoke run.",
            )
        base = _load_diffusers_layout(str(SHAPES_WAN_DIR), components, torch_dtype)
        base.name, base.default_area = SHAPES_WAN, 64 * 64
        base.default_steps, base.default_guidance = 20, 3.0
        base.window_frames, base.window_overlap = 17, 8  # pretrained on 9-frame clips; 17 still holds together
    elif name == TINY_RANDOM:
        base = build_tiny_random()
        base.window_frames, base.window_overlap = 9, 4
        if torch_dtype is not None and torch_dtype != torch.float32:
            for m in (base.transformer, base.text_encoder):  # the VAE stays in fp32, as for loaded bases
                m.to(torch_dtype)
    else:
        base = _load_diffusers_layout(name, components, torch_dtype)
    for m in (base.transformer, base.vae, base.text_encoder):
        if m is not None:
            m.requires_grad_(False)
    return base


def _load_diffusers_layout(name: str, components: tuple[str, ...], torch_dtype: torch.dtype | None) -> Base:
    path = Path(name).expanduser()
    local = path.exists()
    if local and not (path / "model_index.json").is_file():
        raise UsageError(
            f"{name} is not a diffusers-format Wan folder (no model_index.json).",
            "Point --model at a folder like Wan-AI/Wan2.1-T2V-1.3B-Diffusers, a hub id, or 'tiny-random'.",
        )
    if not local and (name.count("/") != 1 or name.startswith((".", "/"))):
        raise UsageError(
            f"Base {name!r} is neither a folder nor a hub id.",
            f"Use a diffusers-format Wan folder, a hub id such as Wan-AI/Wan2.1-T2V-1.3B-Diffusers, or one of: {', '.join(BUILTIN_BASES)}.",
        )
    src = str(path) if local else name
    try:
        # torch_dtype at load time keeps the modules diffusers wants in fp32 (norms, rope) in fp32.
        kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        transformer = WanTransformer3DModel.from_pretrained(src, subfolder="transformer", **kw)
        vae = (
            AutoencoderKLWan.from_pretrained(src, subfolder="vae", torch_dtype=torch.float32)
            if "vae" in components
            else None
        )
        text_encoder = (
            UMT5EncoderModel.from_pretrained(
                src, subfolder="text_encoder", **({"dtype": torch_dtype} if torch_dtype else {})
            )
            if "text_encoder" in components
            else None
        )
        tokenizer = AutoTokenizer.from_pretrained(src, subfolder="tokenizer") if "tokenizer" in components else None
        scheduler = _scheduler_class(src, "scheduler").from_pretrained(src, subfolder="scheduler")
    except (OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (
            "HF_HUB_OFFLINE=1 is set: download it first (`hf download ID`) or point --model at a local copy."
            if offline and not local
            else "Check that the folder holds a complete diffusers-format Wan checkpoint."
        )
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImveditError(f"Could not load base {name!r}: {first}", hint) from e
    for m in (transformer, vae, text_encoder):
        if m is not None:
            m.eval()
    return Base(src, transformer, vae, text_encoder, tokenizer, scheduler)


def save_base(base: Base, path: str | Path) -> None:
    """Write a base in the diffusers Wan layout, loadable by `load_base` and by `diffusers.WanPipeline`."""
    from diffusers import WanPipeline

    pipe = WanPipeline(
        tokenizer=base.tokenizer,
        text_encoder=base.text_encoder,
        vae=base.vae,
        scheduler=base.scheduler,
        transformer=base.transformer,
    )
    pipe.save_pretrained(str(path))
    # A component loaded from a folder records that folder in its config; it means nothing on another machine.
    for config in Path(path).glob("*/config.json"):
        data = json.loads(config.read_text())
        if data.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
