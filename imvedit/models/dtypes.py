"""The compute precisions a user may name (`--dtype` of edit and export, the ComfyUI Loader's precision).

One table, so that every command accepts the same names; it needs nothing but torch, so that the ComfyUI
nodes can offer the names without loading diffusers.
"""

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
