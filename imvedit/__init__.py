"""imvedit: learn text-instructed video editing from image pairs (ImVideoEdit) on a frozen Wan base."""

__version__ = "0.1.0"

from .errors import ImveditError, UsageError

# The pipeline and the adapter are importable from the top level, for scripts. They are imported on first
# use, so that `import imvedit` (and the CLI's --help) does not pay for torch and diffusers.
_LAZY = {
    "ImVideoEditAdapter": "imvedit.models.imvedit",
    "ImVideoEditPipeline": "imvedit.pipeline.pipeline_imvedit",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'imvedit' has no attribute {name!r}")


__all__ = ["ImVideoEditAdapter", "ImVideoEditPipeline", "ImveditError", "UsageError", "__version__"]
