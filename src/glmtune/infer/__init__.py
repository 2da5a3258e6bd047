"""Using a model: generation (streamed or batched), chat sessions, the API server."""

from .generation import decode_steps, generate_batch, generate_stream, sampling_config
from .sampling import SamplingConfig

__all__ = ["SamplingConfig", "decode_steps", "generate_batch", "generate_stream", "sampling_config"]
