"""Base models: a diffusers-format Wan folder, a hub id, or the built-in `tiny-random`.

Every base goes through `load_base`, which loads each component with its own diffusers or
transformers class from the layout of `Wan-AI/Wan2.1-T2V-1.3B-Diffusers` (`model_index.json` +
`transformer/ vae/ text_encoder/ tokenizer/ scheduler/`). Wan2.2-T2V-A14B adds a second expert,
`transformer_2/`, and the pipeline config's `boundary_ratio`, as diffusers' `WanPipeline` stores them:
`transformer` denoises timesteps t >= boundary_ratio * num_train_timesteps (high noise), `transformer_2`
the rest. Before any weights are read, the folder's JSON configs are checked against what imvedit
supports (`check_supported`), so an image-to-video or VACE base is refused at once. `tiny-random` is built in memory from the
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

COMPONENTS = ("transformer", "transformer_2", "vae", "text_encoder", "tokenizer", "scheduler")
EXPERTS = ("high", "low")  # Wan2.2-A14B's experts: `transformer` (high noise) and `transformer_2` (low noise)
SUPPORTED = "Wan2.1-T2V (1.3B, 14B), Wan2.2-TI2V-5B, Wan2.2-T2V-A14B (two experts)"
PIPELINES = ("WanPipeline", "ImVideoEditPipeline")  # a Wan base, or an `imvedit export --format diffusers` folder


def resolve_guidance(given: tuple, defaults: tuple) -> tuple[float, float | None, float | None]:
    """(scale, scale below the boundary, boundary sigma) an edit runs with: what is `given`, else a base's
    `defaults`, each a triple of the same. A first scale given alone applies throughout, as it did before a
    second scale existed; a second scale given alone keeps the base's first."""
    (scale, scale_2, boundary), (default, default_2, default_boundary) = given, defaults
    if scale is None and scale_2 is None:
        scale, scale_2 = default, default_2
    scale = default if scale is None else scale
    if scale_2 is None:
        if boundary is not None:
            raise UsageError("--guidance-boundary sets where --guidance-2 starts.", "Add --guidance-2 or drop it.")
        return scale, None, None
    return scale, scale_2, boundary if boundary is not None else default_boundary


def check_guidance_boundary(boundary: float | None) -> None:
    """A guidance boundary is a noise level strictly inside the schedule (None: the default)."""
    if boundary is not None and not 0.0 < boundary < 1.0:
        raise UsageError(f"--guidance-boundary must be a sigma in (0, 1), got {boundary}.")


def is_guided(scale: float, scale_2: float | None) -> bool:
    """Whether some step of an edit runs the negative branch: a scale other than 1 (resolved scales)."""
    return scale != 1.0 or scale_2 not in (None, 1.0)


@dataclass
class Base:
    """A loaded base: its components and its identity."""

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
    # the text guidance below default_guidance_boundary (a sigma), where fine detail is drawn; None: one scale
    default_guidance_2: float | None = None
    default_guidance_boundary: float | None = None
    # Frames the model sees at once (4k + 1); longer videos are edited in overlapping windows.
    window_frames: int = 81
    window_overlap: int = 16
    # Wan2.2-A14B: the low-noise expert, and where the schedule hands over to it (both None for one expert)
    transformer_2: WanTransformer3DModel | None = None
    boundary_ratio: float | None = None

    def guidance(
        self, scale: float | None, scale_2: float | None, boundary: float | None
    ) -> tuple[float, float | None, float | None]:
        """The text guidance an edit runs with on this base: `resolve_guidance` against its defaults."""
        defaults = (self.default_guidance, self.default_guidance_2, self.default_guidance_boundary)
        return resolve_guidance((scale, scale_2, boundary), defaults)

    @property
    def fingerprint(self) -> str:
        return config_fingerprint(self.transformer.config)

    @property
    def identity(self) -> dict:
        return self.identity_of("high")

    @property
    def experts(self) -> tuple[str, ...]:
        """("high", "low") for a two-expert base, else ("high",): the one transformer counts as the high one."""
        return EXPERTS if self.transformer_2 is not None else EXPERTS[:1]

    def expert(self, name: str) -> WanTransformer3DModel:
        return self.transformer if name == "high" else self.transformer_2

    def identity_of(self, expert: str) -> dict:
        """What an adapter for this expert records of its base: the name and that expert's architecture."""
        config = self.expert(expert).config
        return {
            "name": self.name,
            "fingerprint": config_fingerprint(config),
            "transformer_config": public_config(config),
        }


def bundle_available() -> bool:
    """Whether the embedded default (the shapes-wan base and its adapter) ships with this build."""
    return (SHAPES_WAN_DIR / "model_index.json").is_file() and SHAPES_WAN_ADAPTER.is_file()


def public_config(config) -> dict:
    """A diffusers config (or any mapping) without its private `_` keys, tuples as lists: what JSON and an
    equality test between two configs should see."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}


def config_fingerprint(config) -> str:
    """A short hash of the transformer's architecture: an adapter only fits a base with the same one."""
    blob = json.dumps(public_config(config), sort_keys=True, default=str)
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


@dataclass
class BaseConfigs:
    """A base's JSON configs, read before any weights: enough to say whether imvedit can run it."""

    model_index: dict
    transformer: dict
    vae: dict | None = None
    transformer_2: dict | None = None

    @property
    def boundary_ratio(self) -> float | None:
        return self.model_index.get("boundary_ratio") if self.transformer_2 is not None else None


def _present(entry) -> bool:
    """A model_index.json component entry that names a class: `[null, null]` is how diffusers writes none."""
    return isinstance(entry, list | tuple) and len(entry) == 2 and entry[0] is not None


def read_base_configs(name: str) -> BaseConfigs:
    """model_index.json and the transformer (and VAE) configs of a local folder or a hub id (hub files come
    from the local cache when HF_HUB_OFFLINE=1). OSError/ValueError when they cannot be read."""
    path = Path(name).expanduser()
    if path.is_dir():

        def read(file: str) -> dict | None:
            return json.loads((path / file).read_text()) if (path / file).is_file() else None
    else:
        from huggingface_hub import hf_hub_download

        def read(file: str) -> dict | None:
            return json.loads(Path(hf_hub_download(name, file)).read_text())

    index = read("model_index.json") or {}
    transformer = read("transformer/config.json")
    if transformer is None:
        raise UsageError(f"{name} has no transformer/config.json.", "Give a complete diffusers-format Wan folder.")
    second = read("transformer_2/config.json") if _present(index.get("transformer_2")) else None
    return BaseConfigs(index, transformer, read("vae/config.json"), second)


def check_supported(configs: BaseConfigs, name: str) -> None:
    """Refuse, in one line, a base imvedit cannot edit with: image-to-video, VACE, or an unknown class."""
    pipeline = configs.model_index.get("_class_name")
    z_dim = (configs.vae or {}).get("z_dim")
    problem = None
    if pipeline == "WanImageToVideoPipeline":
        problem = "an image-to-video (I2V) base"
    elif pipeline == "WanVACEPipeline":
        problem = "a VACE base"
    elif pipeline is not None and pipeline not in PIPELINES:
        problem = f"a {pipeline} base, which imvedit does not know"
    for sub, cfg in (("transformer", configs.transformer), ("transformer_2", configs.transformer_2)):
        if problem is not None or cfg is None:
            break
        cls = cfg.get("_class_name")
        if cls == "WanVACETransformer3DModel" or "vace_layers" in cfg:
            problem = "a VACE base"
        elif cls is not None and cls != "WanTransformer3DModel":
            problem = f"a base whose {sub} is a {cls}, which imvedit does not know"
        elif cfg.get("image_dim") is not None:
            problem = f"an image-to-video (I2V) base (its {sub} takes image embeddings)"
        elif z_dim is not None and cfg.get("in_channels", z_dim) > z_dim:
            problem = f"an image-to-video (I2V) base ({sub} in_channels {cfg['in_channels']} > the VAE's {z_dim} latent channels)"
    if problem is not None:
        raise UsageError(
            f"{name} is {problem}; imvedit edits with text-to-video bases only.", f"Supported: {SUPPORTED}."
        )


def expert_count(name: str) -> int:
    """How many experts a base has (2 for Wan2.2-A14B), from its model_index.json alone."""
    if name in BUILTIN_BASES:
        return 1
    try:
        configs = read_base_configs(_source(name))
    except (OSError, ValueError) as e:
        raise ImveditError(f"Could not load base {name!r}: {_first_line(e)}", _load_hint(name)) from e
    return 2 if configs.transformer_2 is not None else 1


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _load_hint(name: str) -> str:
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not Path(name).expanduser().exists():
        return "HF_HUB_OFFLINE=1 is set: download it first (`hf download ID`) or point --model at a local copy."
    return "Check that the folder holds a complete diffusers-format Wan checkpoint."


def _scheduler_class(path: str, subfolder: str):
    import diffusers

    # Any scheduler class reads scheduler_config.json; its _class_name says which one to build.
    config = FlowMatchEulerDiscreteScheduler.load_config(path, subfolder=subfolder)
    cls = getattr(diffusers, config.get("_class_name", ""), None)
    if cls is None:
        raise ImveditError(f"Unknown scheduler class {config.get('_class_name')!r} in {path}/{subfolder}.")
    return cls


def with_flow_shift(scheduler, shift: float | None):
    """`scheduler` with its sigma shift set to `shift`, as Wan users set `flow_shift` per resolution (None:
    the scheduler as it is). A copy, so the base keeps its own for the next edit. The flow-matching
    schedulers name it `shift` (FlowMatchEuler) or `flow_shift` (UniPC and DPM-Solver with flow sigmas)."""
    if shift is None:
        return scheduler
    config = scheduler.config
    if config.get("use_flow_sigmas") and "flow_shift" in config:
        key = "flow_shift"
    elif "shift" in config and not config.get("use_dynamic_shifting"):
        key = "shift"
    else:
        raise UsageError(
            f"This base's scheduler ({type(scheduler).__name__}) has no fixed flow shift to set.",
            "Drop --flow-shift, or use a base whose scheduler is FlowMatchEuler or UniPC with flow sigmas.",
        )
    return type(scheduler).from_config(config, **{key: shift})


# What `imvedit edit` picks for a toy base (the bundled one, or a folder `imvedit.toy.pretrain` wrote): it was
# pretrained on 64-px 9-frame clips, and 17-frame windows still hold together. Text guidance 1.5 from the top
# of the schedule down to sigma 0.8, where the object's colour is decided, and off (1) below: guidance over
# every step pushed "make it black and white" past grey and spoilt the plain fill of a removed object
# (docs/toy.md, seventh run and "Guidance where the edit is decided")
TOY_DEFAULTS = {
    "default_steps": 20, "default_guidance": 1.5, "default_guidance_2": 1.0, "default_guidance_boundary": 0.8,
    "window_frames": 17, "window_overlap": 8,
}  # fmt: skip


def toy_defaults(folder: str | Path) -> dict | None:
    """The sampling defaults of a toy base folder, from the pretraining report beside its weights (its `config`
    gives the canvas the base was trained at); None for any other folder, which keeps Wan's."""
    report = Path(folder).expanduser() / "pretrain_report.json"
    try:
        size = int(json.loads(report.read_text())["config"]["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {"default_area": size * size, **TOY_DEFAULTS}


def _set_toy_defaults(base: Base, folder: str | Path) -> None:
    for field, value in (toy_defaults(folder) or {}).items():
        setattr(base, field, value)


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
        base.name = SHAPES_WAN
        _set_toy_defaults(base, SHAPES_WAN_DIR)
    elif name == TINY_RANDOM:
        base = build_tiny_random()
        base.window_frames, base.window_overlap = 9, 4
        if torch_dtype is not None and torch_dtype != torch.float32:
            for m in (base.transformer, base.text_encoder):  # the VAE stays in fp32, as for loaded bases
                m.to(torch_dtype)
    else:
        base = _load_diffusers_layout(name, components, torch_dtype)
        _set_toy_defaults(base, name)  # a folder `imvedit.toy.pretrain` wrote samples as the bundled one does
    for m in (base.transformer, base.vae, base.text_encoder):
        if m is not None:
            m.requires_grad_(False)
    return base


def _source(name: str) -> str:
    """The folder or hub id a base name stands for, refusing what can be neither."""
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
    return str(path) if local else name


def _load_diffusers_layout(name: str, components: tuple[str, ...], torch_dtype: torch.dtype | None) -> Base:
    src = _source(name)
    try:
        configs = read_base_configs(src)
        check_supported(configs, name)  # before any weights: an unsupported base is refused at once
        ratio = _boundary_ratio(configs, name) if configs.transformer_2 is not None else None
        # torch_dtype at load time keeps the modules diffusers wants in fp32 (norms, rope) in fp32.
        kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        transformer = WanTransformer3DModel.from_pretrained(src, subfolder="transformer", **kw)
        transformer_2 = (
            WanTransformer3DModel.from_pretrained(src, subfolder="transformer_2", **kw)
            if configs.transformer_2 is not None and "transformer_2" in components
            else None
        )
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
        raise ImveditError(f"Could not load base {name!r}: {_first_line(e)}", _load_hint(name)) from e
    for m in (transformer, transformer_2, vae, text_encoder):
        if m is not None:
            m.eval()
    base = Base(src, transformer, vae, text_encoder, tokenizer, scheduler, transformer_2=transformer_2)
    base.boundary_ratio = ratio if transformer_2 is not None else None
    return base


def _boundary_ratio(configs: BaseConfigs, name: str) -> float:
    ratio = configs.boundary_ratio
    if not isinstance(ratio, int | float) or not 0.0 < ratio < 1.0:
        raise UsageError(
            f"{name} has two experts but its model_index.json gives no boundary_ratio in (0, 1) (got {ratio!r}).",
            'Add the one its model card gives, e.g. "boundary_ratio": 0.875 for Wan2.2-T2V-A14B.',
        )
    return float(ratio)


def save_base(base: Base, path: str | Path) -> None:
    """Write a base in the diffusers Wan layout, loadable by `load_base` and by `diffusers.WanPipeline`."""
    from diffusers import WanPipeline

    pipe = WanPipeline(
        tokenizer=base.tokenizer,
        text_encoder=base.text_encoder,
        vae=base.vae,
        scheduler=base.scheduler,
        transformer=base.transformer,
        transformer_2=base.transformer_2,
        boundary_ratio=base.boundary_ratio,
    )
    pipe.save_pretrained(str(path))
    # A component loaded from a folder records that folder in its config; it means nothing on another machine.
    for config in Path(path).glob("*/config.json"):
        data = json.loads(config.read_text())
        if data.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
