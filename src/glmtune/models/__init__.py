"""GLM-family models: native loading, conversion both ways, named shapes.

Only the shape table loads eagerly: the config layer checks ``model.path`` against :data:`SHAPES`
without paying for torch and transformers. Everything else loads on first use (PEP 562).
"""

from ..lazy import lazy_exports
from .shapes import SHAPES, shape_config

_LAZY = {
    "CheckpointError": "convert",
    "chatglm_state_dict_to_glm": "convert",
    "chatglm_to_glm_config": "convert",
    "glm_state_dict_to_chatglm": "convert",
    "glm_to_chatglm_config": "convert",
    "PREFIX_ENCODER_KEYS": "loading",
    "find_glm": "loading",
    "load_model": "loading",
    "prefix_length": "loading",
    "read_model_config": "loading",
    "resolve_dtype": "loading",
    "save_model": "loading",
    "write_generation_config": "loading",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = ["SHAPES", "shape_config", *_LAZY]
