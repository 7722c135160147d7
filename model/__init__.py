"""The VisualRWKV-6 model in pure PyTorch (no lmms-eval imports): `load_model` is the entry point."""

from .checkpoint import CheckpointError, load_checkpoint
from .config import RWKV6Config
from .generate import (
    BatchStats,
    Conversation,
    Generation,
    GenerationRequest,
    NonFiniteLogitsError,
    continue_batch,
    generate_batch,
    loglikelihood_batch,
)
from .tokenizer import WorldTokenizer, world_tokenizer
from .vision import VisionTowerError
from .visualrwkv import DEFAULT_VISION_TOWER, VisualRWKV, load_model

__all__ = [
    "DEFAULT_VISION_TOWER",
    "BatchStats",
    "CheckpointError",
    "Conversation",
    "Generation",
    "GenerationRequest",
    "NonFiniteLogitsError",
    "RWKV6Config",
    "VisionTowerError",
    "VisualRWKV",
    "WorldTokenizer",
    "continue_batch",
    "generate_batch",
    "load_checkpoint",
    "load_model",
    "loglikelihood_batch",
    "world_tokenizer",
]
