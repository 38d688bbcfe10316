"""Flax NNX models: the decoder, its heads, the KV cache, sampling and checkpoint I/O."""

from rmjax.models.config import ModelConfig
from rmjax.models.transformer import Transformer
