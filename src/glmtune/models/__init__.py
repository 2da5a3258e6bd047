"""GLM-family models: native loading, conversion both ways, named shapes."""

from .convert import (
    CheckpointError,
    chatglm_state_dict_to_glm,
    chatglm_to_glm_config,
    glm_state_dict_to_chatglm,
    glm_to_chatglm_config,
)
from .loading import (
    PREFIX_ENCODER_KEYS,
    find_glm,
    load_model,
    prefix_length,
    read_model_config,
    resolve_dtype,
    save_model,
    write_generation_config,
)
from .shapes import SHAPES, shape_config

__all__ = [
    "PREFIX_ENCODER_KEYS",
    "SHAPES",
    "CheckpointError",
    "chatglm_state_dict_to_glm",
    "chatglm_to_glm_config",
    "glm_state_dict_to_chatglm",
    "find_glm",
    "glm_to_chatglm_config",
    "load_model",
    "prefix_length",
    "read_model_config",
    "resolve_dtype",
    "save_model",
    "shape_config",
    "write_generation_config",
]
