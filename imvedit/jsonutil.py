"""Strict JSON for everything imvedit writes for machines (`--json`, metrics.json, results.json).

Python's `json` writes `Infinity` and `NaN` for non-finite floats, which jq, JavaScript and most parsers
reject. A PSNR of identical frames is +inf; it is written as `null` ("no finite value"), documented in
docs/cli.md, and the human output keeps saying "inf".
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(obj: Any) -> Any:
    """`obj` with every non-finite float (inf, -inf, nan), however deeply nested, replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs) -> str:
    """`json.dumps` that any parser reads: non-finite floats as null, other objects as their str()."""
    kwargs.setdefault("default", str)
    return json.dumps(finite(obj), allow_nan=False, **kwargs)
