"""The names the prepare job was imported by before it was split into modules; they stay importable here.

`imvedit prepare` is now three modules: sources.py reads the datasets users keep, prepare.py writes the
prepared folder (`PrepareConfig`, `prepare`), dataset.py reads that folder back for training.
"""

from .dataset import BucketBatchSampler, PairsDataset, load_pairs_manifest  # noqa: F401
from .prepare import CHECKPOINT_EVERY, RESUME_FILE, PrepareConfig, prepare  # noqa: F401
