"""dba-vqa: visual question answering with Dynamic Bilinear Low-Rank Attention (DBA).

The heavy submodules load on first use, so ``import vqa`` stays cheap.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "VQAModel": "vqa.model",
    "Predictor": "vqa.inference",
    "build_attention": "vqa.attention",
    "load_config": "vqa.config",
    "RunConfig": "vqa.config",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vqa' has no attribute {name!r}")
