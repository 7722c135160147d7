"""lmms-eval entry point (group `lmms_eval.models`): declares the model id `visualrwkv`.

Kept import-light: lmms-eval loads every plugin's manifests when it starts, and one failing import there
would silently skip the plugins after it.
"""

from lmms_eval.models.registry_v2 import ModelManifest


def manifests() -> list[ModelManifest]:
    return [ModelManifest(model_id="visualrwkv", simple_class_path="visualrwkv_eval.lmms_model.VisualRWKVLmms")]
