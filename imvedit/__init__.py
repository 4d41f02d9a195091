"""imvedit: learn text-instructed video editing from image pairs (ImVideoEdit) on a frozen Wan base."""

__version__ = "0.1.0"

from .errors import ImveditError, UsageError

__all__ = ["ImveditError", "UsageError", "__version__"]
