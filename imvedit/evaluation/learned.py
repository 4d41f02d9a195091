"""Metrics with learned weights (CLIP, DINOv2) and with optical flow, as the video-editing benchmarks
define them. Each metric model is loaded once; when it cannot be loaded (no weights on disk, offline,
OpenCV missing) the metric is reported as skipped with the reason, never as a number.

- `clip_t`: CLIP text alignment, 100 x the cosine of each frame's image embedding with the prompt's text
  embedding, averaged over frames (EditVerseBench, V2VBench; they use CLIP ViT-L/14).
- `clip_f`: CLIP frame consistency, the cosine between consecutive frames' image embeddings, averaged.
- `dino_f`: the same with DINOv2's [CLS] features.
- `warp_error`: motion-compensated flicker beyond the source's: with the source's Farneback optical
  flow from frame t to t-1, warp frame t-1 onto t in the edit and in the source, and average
  |(warped_edit - edit_t) - (warped_source - source_t)| over pixels on [0, 1]. Zero for an exact copy of
  the source; the benchmarks' plain warp error (the edit's term alone) is `warp_error_raw`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .judge import JudgeError

DEFAULT_CLIP = "openai/clip-vit-large-patch14"  # the benchmarks' CLIP
DEFAULT_DINO = "facebook/dinov2-base"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@dataclass
class MetricModels:
    """The loaded metric models and, for each that is missing, why."""

    clip: tuple | None = None  # (model, tokenizer, image processor)
    dino: tuple | None = None  # (model, image processor)
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> reason
    names: dict = field(default_factory=dict)  # which weights each metric used (and the judge's identity)
    judge: object | None = None  # a judge.Judge: VLM scores through an OpenAI-compatible endpoint
    device: torch.device = torch.device("cpu")

    @classmethod
    def load(cls, clip: str | None, dino: str | None, device: torch.device | None = None, judge=None) -> MetricModels:
        """`clip`/`dino`: a local folder or hub id; "none" skips the metric on purpose. `judge`: a judge.Judge."""
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        m = cls(device=device or torch.device("cpu"), judge=judge)
        if judge is not None:
            m.names["judge"] = judge.identity
        else:
            m.skipped["judge"] = "no VLM judge given (--judge-url, --judge-model)"
        if clip in (None, "none"):
            m.skipped.update({"clip_t": "no CLIP model given (--clip)", "clip_f": "no CLIP model given (--clip)"})
        else:
            try:
                model = AutoModel.from_pretrained(clip).eval().to(m.device)
                m.clip = (model, AutoTokenizer.from_pretrained(clip), AutoImageProcessor.from_pretrained(clip))
                m.names["clip"] = clip
            except Exception as e:  # noqa: BLE001 - any failure to load means the same: skip, say why
                reason = f"CLIP weights {clip!r} could not be loaded: {_first_line(e)}"
                m.skipped.update({"clip_t": reason, "clip_f": reason})
        if dino in (None, "none"):
            m.skipped["dino_f"] = "no DINOv2 model given (--dino)"
        else:
            try:
                m.dino = (AutoModel.from_pretrained(dino).eval().to(m.device), AutoImageProcessor.from_pretrained(dino))
                m.names["dino"] = dino
            except Exception as e:  # noqa: BLE001
                m.skipped["dino_f"] = f"DINOv2 weights {dino!r} could not be loaded: {_first_line(e)}"
        try:
            import cv2  # noqa: F401
        except ImportError:
            reason = "OpenCV is not installed (pip install 'imvedit[eval]')"
            m.skipped.update({"warp_error": reason, "warp_error_raw": reason})
        return m

    @torch.no_grad()
    def score(
        self, frames: np.ndarray, source: np.ndarray | None, prompt: str | None, instruction: str | None = None
    ) -> dict:
        """The learned and flow metrics of one edited clip (uint8 frames (n, h, w, 3)); the judge reads
        `instruction` (else `prompt`). A judge that fails on a clip leaves its reason in `judge_error`."""

        out: dict = {}
        if self.judge is not None and source is not None and (instruction or prompt):
            try:
                out.update(self.judge.score(frames, source, instruction or prompt))
            except JudgeError as e:
                out["judge_error"] = str(e)
        if self.clip is not None:
            model, tokenizer, processor = self.clip
            img = _unit_rows(model.get_image_features(**_pixels(processor, frames, self.device)))
            out["clip_f"] = _consecutive_cosine(img)
            if prompt:
                tokens = tokenizer([prompt], padding=True, truncation=True, return_tensors="pt").to(self.device)
                text = _unit_rows(model.get_text_features(**tokens))
                out["clip_t"] = float(100.0 * (img @ text.T).mean())
            else:  # other clips may have prompts: the reason belongs to this clip, not the run
                out["clip_t_skipped"] = "no prompt for this clip"
        if self.dino is not None:
            model, processor = self.dino
            hidden = model(**_pixels(processor, frames, self.device)).last_hidden_state[:, 0]
            out["dino_f"] = _consecutive_cosine(_unit_rows(hidden))
        if "warp_error" not in self.skipped and source is not None:
            out["warp_error"], out["warp_error_raw"] = warp_errors(frames, source)
        return out


def _pixels(processor, frames: np.ndarray, device) -> dict:
    return {k: v.to(device) for k, v in processor(images=list(frames), return_tensors="pt").items()}


def _unit_rows(x) -> torch.Tensor:
    x = x if isinstance(x, torch.Tensor) else x.pooler_output  # transformers 5 may return an output object
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def _consecutive_cosine(emb: torch.Tensor) -> float:
    if len(emb) < 2:
        return 1.0  # one frame is consistent with itself
    return float((emb[1:] * emb[:-1]).sum(-1).mean())


def warp_errors(pred: np.ndarray, source: np.ndarray) -> tuple[float, float]:
    """(warp_error, warp_error_raw) of `pred` under the source's optical flow; see the module doc."""
    import cv2

    if len(pred) < 2:
        return 0.0, 0.0
    p, s = pred.astype(np.float32) / 255.0, source.astype(np.float32) / 255.0
    h, w = s.shape[1:3]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in source]
    relative, raw = [], []
    for t in range(1, len(s)):
        # flow from frame t to t-1: where each pixel of frame t was in frame t-1
        flow = cv2.calcOpticalFlowFarneback(gray[t], gray[t - 1], None, 0.5, 3, 15, 3, 5, 1.2, 0)
        map_x, map_y = grid_x + flow[..., 0], grid_y + flow[..., 1]
        edit_residual = cv2.remap(p[t - 1], map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) - p[t]
        source_residual = cv2.remap(s[t - 1], map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) - s[t]
        raw.append(float(np.abs(edit_residual).mean()))
        relative.append(float(np.abs(edit_residual - source_residual).mean()))
    return float(np.mean(relative)), float(np.mean(raw))
