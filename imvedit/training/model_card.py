"""The model card (README.md) beside an adapter: the one a training run writes into its folder and the one
`imvedit export` writes beside every export. Both are made from the adapter file's own metadata (base, switches,
training summary), so a run's card and its export's say the same; only the usage differs with the format.
"""

from __future__ import annotations

from .. import __version__
from ..models.adapter_file import second_name
from ..models.loading import ADAPTER_FILE, EXPORTED_ADAPTER, EXPORTED_ADAPTER_2

FRONT_MATTER = "---\nlibrary_name: imvedit\ntags: [video-editing, wan, imvideoedit]\n---\n\n"


def model_card(
    meta: dict, parameters: int, dtype: str, export_format: str | None = None, filename: str = ADAPTER_FILE
) -> str:
    """The card of the adapter whose file metadata is `meta` (of a two-expert pair: the first file's), with
    `parameters` counted over all its files and `dtype` as written. `export_format` None: a training run's
    folder, which also holds config.yaml and log.jsonl; else the export's format ("adapter", "comfyui",
    "diffusers"), whose usage the card shows. `filename`: the adapter file the usage names."""
    base, training = meta["base"], meta.get("training") or {}
    rows = [
        ("base", f"`{base['name']}` (transformer fingerprint `{base['fingerprint']}`)"),
        ("trainable parameters", f"{parameters:,}"),
        ("dtype", dtype),
        ("switches", ", ".join(f"{k}={v}" for k, v in meta["adapter_config"].items() if not k.startswith("_"))),
        *_expert_rows(meta, training, _pair_names(export_format, filename)),
        *_training_rows(training),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    trained = f" with imvedit {training['imvedit_version']}" if "imvedit_version" in training else ""
    exported = f" Exported with imvedit {__version__}." if export_format else ""
    run_files = (
        "" if export_format else "The full training config is in `config.yaml`, the loss per step in `log.jsonl`.\n"
    )
    return (
        f"{FRONT_MATTER}# ImVideoEdit adapter{f' ({export_format} export)' if export_format else ''}\n\n"
        "An edit adapter for a frozen Wan video diffusion transformer, trained on image pairs only "
        f"(ImVideoEdit){trained}.{exported}\n\n"
        f"| | |\n|---|---|\n{table}\n\n{_usage(export_format or 'adapter', filename)}\n"
        "Loading checks that the weights match their recorded sha256 and that the base has the "
        f"architecture the adapter was trained for.\n{run_files}"
    )


def _pair_names(export_format: str | None, filename: str) -> tuple[str, str]:
    """Where a pair's two adapters are: two files, or a diffusers export's two folders."""
    if export_format == "diffusers":
        return f"{EXPORTED_ADAPTER.parent}/", f"{EXPORTED_ADAPTER_2.parent}/"
    return filename, second_name(filename)


def _expert_rows(meta: dict, training: dict, names: tuple[str, str]) -> list[tuple[str, str]]:
    """A two-expert base's (Wan2.2-A14B): which experts are adapted, and how many steps each trained."""
    if "expert" not in meta:
        return []
    ratio = f" (boundary ratio {training['boundary_ratio']})" if "boundary_ratio" in training else ""
    if meta.get("pair"):
        experts = (
            f"one adapter per expert (high and low noise){ratio}, `{names[0]}` and `{names[1]}`, which name each"
            " other: keep them together"
        )
    else:
        experts = f"the {meta['expert']}-noise expert's adapter alone{ratio}; the other expert runs unadapted"
    rows = [("experts", experts)]
    if "steps_per_expert" in training:
        steps = ", ".join(f"{e}-noise {n}" for e, n in training["steps_per_expert"].items())
        rows.append(("training steps per expert", steps))
    return rows


def _training_rows(training: dict) -> list[tuple[str, str]]:
    """The training summary the file carries, each row as far as it is known (older files carry less)."""
    config, rows = training.get("config") or {}, []
    if "pairs" in training:
        rows.append(
            (
                "training pairs",
                f"{training['pairs']}" + (f" (`{config['pairs_dir']}`)" if "pairs_dir" in config else ""),
            )
        )
    if "steps" in training:
        batch = f" × batch {config['batch_size']}" if "batch_size" in config else ""
        processes = f" × {training['processes']} process(es)" if "processes" in training else ""
        rows.append(("training steps", f"{training['steps']}{batch}{processes}"))
    if "seconds" in training:
        rows.append(("training time", f"{training['seconds']:.0f} s"))
    if "final_loss" in training:
        last_10 = training.get("mean_loss_last_10")
        mean = f" (mean of the last 10: {last_10:.4f})" if last_10 is not None else ""
        rows.append(("final loss", f"{training['final_loss']:.4f}{mean}"))
    return rows


def _usage(fmt: str, filename: str) -> str:
    if fmt == "adapter":
        return (
            "```bash\n"
            f'imvedit edit in.mp4 "your instruction" -o out.mp4 --adapter {filename}\n'
            "```\n\n"
            "```python\n"
            "from imvedit.models.adapter_file import load_adapter\n\n"
            f'adapter, meta = load_adapter("{filename}")  # checks the payload hash\n'
            "```\n"
        )
    if fmt == "comfyui":
        return (
            "Install imvedit into ComfyUI's Python environment, then copy both folders into ComfyUI:\n\n"
            "```bash\n"
            "COMFY_PYTHON -m pip install imvedit      # the Python that runs ComfyUI\n"
            "cp -r models custom_nodes PATH/TO/ComfyUI/\n"
            "```\n\n"
            f"Restart ComfyUI; the **ImVideoEdit Loader** node lists `{filename}` (from `models/imvedit/`) and\n"
            "loads the base the adapter names (or one you give it); **ImVideoEdit Apply** edits an IMAGE batch\n"
            "(the frames of a video) and also returns the gate as a MASK. The file is not a LoRA: ComfyUI's\n"
            "LoRA loaders would find none of its keys.\n"
        )
    return (
        "```python\n"
        "from imvedit import ImVideoEditPipeline\n\n"
        'pipe = ImVideoEditPipeline.from_pretrained("THIS_FOLDER")\n'
        'out = pipe(frames, "your instruction")  # frames: (n, h, w, 3) uint8\n\n'
        "# or through diffusers alone (pipeline.py only imports the installed imvedit):\n"
        "from diffusers import DiffusionPipeline\n\n"
        'pipe = DiffusionPipeline.from_pretrained("THIS_FOLDER", custom_pipeline="pipeline", trust_remote_code=True)\n'
        "```\n\n"
        "```bash\n"
        'imvedit edit in.mp4 "your instruction" -o out.mp4 --model THIS_FOLDER\n'
        "```\n"
    )
