"""ComfyUI nodes for imvedit adapters: `ImVideoEdit Loader` and `ImVideoEdit Apply`.

ComfyUI finds custom nodes as packages in `ComfyUI/custom_nodes/`. `imvedit export --format comfyui` writes
a one-file package there (`NODE_SHIM`) that imports these nodes from the imvedit installed in ComfyUI's
Python, so the node code is versioned and tested with the library instead of being copied around.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

# The `custom_nodes/imvedit/__init__.py` that `imvedit export --format comfyui` writes.
NODE_SHIM = '''"""imvedit's ComfyUI nodes. They live in the imvedit package: install it into ComfyUI's Python
(`python -m pip install imvedit` with the interpreter that runs ComfyUI)."""

try:
    from imvedit.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ImportError as e:
    raise ImportError(
        "The imvedit nodes need the imvedit package in ComfyUI's Python environment: "
        "run `python -m pip install imvedit` with the interpreter that runs ComfyUI."
    ) from e

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
'''

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "NODE_SHIM"]
