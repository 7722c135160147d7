import copy
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from visualrwkv_eval.model.tiny import make_tiny

    # no stop-token prior: answers run long, so fidelity tests cover many decode steps
    return make_tiny(tmp_path_factory.mktemp("tiny"), seed=0, stop_logit=0.0)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    from visualrwkv_eval.model import load_model

    return load_model(str(tiny_dir / "model.pth"), vision_tower=str(tiny_dir / "vision_tower"), dtype="float32")


@pytest.fixture
def tiny_variant(tiny_model):
    """The tiny model with another scan / image position (shares the weights)."""

    def make(scan: str = "bidirectional", image_position: str = "middle"):
        m = copy.copy(tiny_model)
        m.scan, m.image_position = scan, image_position
        return m

    return make


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """The demo's tiny model (short answers) and the mini benchmarks with their rendered task YAMLs."""
    from visualrwkv_eval.model.tiny import make_tiny
    from visualrwkv_eval.tasks import prepare_mini

    out = tmp_path_factory.mktemp("demo")
    make_tiny(out / "tiny", seed=0)
    prepare_mini(out, seed=0)
    return out


@pytest.fixture(scope="session")
def lmms_model(demo_dir):
    """One adapter instance for the whole session (it must survive repeated evaluations)."""
    from visualrwkv_eval.lmms_model import VisualRWKVLmms

    tiny = demo_dir / "tiny"
    return VisualRWKVLmms(pretrained=str(tiny / "model.pth"), vision_tower=str(tiny / "vision_tower"), dtype="float32",
                      batch_size=4)  # fmt: skip


@pytest.fixture
def fresh_backends():
    """resolve_backend decides once per process: forget earlier decisions around a test."""
    import visualrwkv_eval.kernels as kernels

    for fn in (kernels.cupy_import_error, kernels.probe_cupy, kernels._resolve):
        fn.cache_clear()
    yield
    for fn in (kernels.cupy_import_error, kernels.probe_cupy, kernels._resolve):
        fn.cache_clear()
