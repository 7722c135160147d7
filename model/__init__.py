"""VisualRWKV in pure PyTorch (no lmms-eval imports): `load_model` is the entry point; model/families.py says
which parts each checkpoint family is built from (docs/architecture.md)."""

from .checkpoint import CheckpointError, Family
from .config import RWKV6Config
from .families import FAMILIES, Recipe, load_checkpoint
from .generate import (
    BatchStats,
    Conversation,
    Generation,
    GenerationRequest,
    NonFiniteLogitsError,
    continue_batch,
    generate_batch,
    loglikelihood_batch,
    start_conversation,
)
from .tokenizer import WorldTokenizer, world_tokenizer
from .vision import VisionTowerError
from .visualrwkv import DEFAULT_VISION_TOWER, VisualRWKV, load_model

__all__ = [
    "DEFAULT_VISION_TOWER",
    "FAMILIES",
    "BatchStats",
    "CheckpointError",
    "Conversation",
    "Family",
    "Generation",
    "GenerationRequest",
    "NonFiniteLogitsError",
    "RWKV6Config",
    "Recipe",
    "VisionTowerError",
    "VisualRWKV",
    "WorldTokenizer",
    "continue_batch",
    "generate_batch",
    "load_checkpoint",
    "load_model",
    "loglikelihood_batch",
    "start_conversation",
    "world_tokenizer",
]
