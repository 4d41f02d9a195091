"""The ComfyUI nodes. ComfyUI itself is optional here: outside it (tests, scripts) the Loader takes an
adapter path and the device is chosen as `imvedit edit` chooses it, so the same code is tested here."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..models.dtypes import DTYPES

FOLDER = "imvedit"  # ComfyUI/models/imvedit: where the Loader lists adapter files


def _folder_paths():
    """ComfyUI's model-folder registry with our folder in it, or None outside ComfyUI."""
    try:
        import folder_paths  # ComfyUI's own module
    except ImportError:
        return None
    if FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[FOLDER] = (
            [os.path.join(folder_paths.models_dir, FOLDER)],
            {".safetensors"},
        )
    return folder_paths


def _device() -> torch.device:
    try:
        import comfy.model_management as mm
    except ImportError:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return mm.get_torch_device()


def _step_callback(total: int):
    """Inside ComfyUI: its progress bar, and its Cancel button honoured between denoising steps."""
    try:
        import comfy.model_management as mm
        import comfy.utils
    except ImportError:
        return None
    bar = comfy.utils.ProgressBar(total)

    def on_step(_pipe, _i, _t, kwargs):
        mm.throw_exception_if_processing_interrupted()
        bar.update(1)
        return kwargs

    return on_step


def _resize(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(n, h, w, c) in [0, 1] -> (n, height, width, c)."""
    if frames.shape[1:3] == (height, width):
        return frames
    x = F.interpolate(frames.permute(0, 3, 1, 2), size=(height, width), mode="bicubic", antialias=True)
    return x.clamp(0, 1).permute(0, 2, 3, 1)


@dataclass
class LoadedEditor:
    """What flows between the nodes (ComfyUI type IMVEDIT_PIPELINE): the pipeline and its base's defaults."""

    pipe: object  # ImVideoEditPipeline
    base: object  # imvedit.models.bases.Base


class ImVideoEditLoader:
    CATEGORY = "imvedit"
    DESCRIPTION = "Load an imvedit adapter (checked against its hash) and the Wan base it was trained for."
    RETURN_TYPES = ("IMVEDIT_PIPELINE",)
    RETURN_NAMES = ("pipeline",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 - ComfyUI's name
        fp = _folder_paths()
        adapter = (fp.get_filename_list(FOLDER),) if fp else ("STRING", {"default": ""})
        return {
            "required": {
                "adapter": adapter,
                "base": (
                    "STRING",
                    {"default": "", "tooltip": "A diffusers Wan folder or hub id; empty: the adapter's own base."},
                ),
                "precision": (["auto", *DTYPES], {"default": "auto"}),
            }
        }

    def load(self, adapter: str, base: str = "", precision: str = "auto"):
        # imported when the node runs, not when ComfyUI imports every custom node at start-up
        from ..models.loading import load_model
        from ..pipeline.pipeline_imvedit import ImVideoEditPipeline

        fp = _folder_paths()
        path = fp.get_full_path(FOLDER, adapter) if fp else adapter
        if not path:
            raise UsageError(f"No adapter {adapter!r} in models/{FOLDER}/.", "Copy the exported file there.")
        device = _device()
        if precision == "auto":
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        else:
            dtype = DTYPES[precision]
        loaded = load_model(base.strip() or None, str(path), device, dtype)  # finds the other file of a pair
        pipe = ImVideoEditPipeline.from_base(loaded.base, loaded.adapter, loaded.adapter_2)
        pipe.set_progress_bar_config(disable=True)
        return (LoadedEditor(pipe, loaded.base),)


class ImVideoEditApply:
    CATEGORY = "imvedit"
    DESCRIPTION = "Edit the frames of a video as the instruction says; also returns the gate as an edit mask."
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("frames", "edit_mask")
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 - ComfyUI's name
        return {
            "required": {
                "pipeline": ("IMVEDIT_PIPELINE",),
                "frames": ("IMAGE",),
                "instruction": ("STRING", {"multiline": True, "default": "make it winter"}),
            },
            "optional": {
                "description": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": "The edited video described; fed to the base's cross-attention. Empty: the instruction.",
                    },
                ),
                "steps": ("INT", {"default": 0, "min": 0, "max": 200, "tooltip": "0: the base's default."}),
                "guidance": (
                    "FLOAT",
                    {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1, "tooltip": "0: the base's default."},
                ),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1}),
                "window": (
                    "INT",
                    {"default": 0, "min": 0, "max": 10_000, "tooltip": "Frames per temporal window; 0: the base's."},
                ),
            },
        }

    def edit(
        self,
        pipeline: LoadedEditor,
        frames: torch.Tensor,
        instruction: str,
        description: str = "",
        steps: int = 0,
        guidance: float = 0.0,
        strength: float = 1.0,
        seed: int = 0,
        window: int = 0,
    ):
        pipe, base = pipeline.pipe, pipeline.base
        n, height, width, _ = frames.shape
        m = pipe.size_multiple  # the model's sides are multiples of this: round, edit, and scale back
        work_h, work_w = max(m, round(height / m) * m), max(m, round(width / m) * m)
        video = _resize(frames.float().cpu(), work_h, work_w).mul(255).round().to(torch.uint8).numpy()
        steps = steps or base.default_steps
        scale, scale_2, boundary = base.guidance(guidance or None, None, None)  # 0: the base's, as `imvedit edit`
        result = pipe(
            video,
            description.strip() or instruction,
            gate_prompt=instruction,
            num_inference_steps=steps,
            guidance_scale=scale,
            guidance_scale_2=scale_2,
            guidance_boundary=boundary,
            strength=strength,
            generator=torch.Generator().manual_seed(seed),
            window_size=window or base.window_frames,
            window_overlap=base.window_overlap,
            callback_on_step_end=_step_callback(steps),
        )
        edited = _resize(torch.from_numpy(result.frames).float(), height, width)
        if result.gate is None:
            mask = torch.zeros(n, height, width)
        else:
            mask = _resize(torch.from_numpy(result.gate).float()[..., None], height, width)[..., 0]
        return (edited, mask)


NODE_CLASS_MAPPINGS = {"ImVideoEditLoader": ImVideoEditLoader, "ImVideoEditApply": ImVideoEditApply}
NODE_DISPLAY_NAME_MAPPINGS = {"ImVideoEditLoader": "ImVideoEdit Loader", "ImVideoEditApply": "ImVideoEdit Apply"}
