"""`imvedit eval` on existing outputs: how an edited video compares with its source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..video.io import is_image, read_image, read_video
from .metrics import flicker, psnr, temporal_error


@dataclass
class EvalConfig:
    pred: Path  # the edited video (or image)
    source: Path  # the video (or image) it was made from

    def validate(self) -> None:
        for p in (self.pred, self.source):
            if not Path(p).exists():
                raise UsageError(f"{p} does not exist.", "Check the path.")


def _read(path: Path):
    return read_image(path) if is_image(path) else read_video(path)[0]


def evaluate_pair(config: EvalConfig) -> dict:
    config.validate()
    pred, source = _read(config.pred), _read(config.source)
    if pred.shape != source.shape:
        raise UsageError(
            f"{config.pred} is {pred.shape[0]} frames of {pred.shape[2]}x{pred.shape[1]}, "
            f"{config.source} is {source.shape[0]} frames of {source.shape[2]}x{source.shape[1]}.",
            "Compare an edit with the source it was made from.",
        )
    return {
        "pred": str(config.pred),
        "source": str(config.source),
        "frames": int(pred.shape[0]),
        "psnr_vs_source": psnr(pred, source),
        "flicker": flicker(pred),
        "source_flicker": flicker(source),
        "temporal_error_vs_source": temporal_error(pred, source),
    }
