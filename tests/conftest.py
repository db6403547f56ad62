import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models run fastest single-threaded; subprocesses (torchrun, resume tests) inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved random 3-stage pixel-space model (16/32/64 px, minilm text) for CLI and pipeline tests."""
    from tests.helpers import build_tiny_pipeline

    path = tmp_path_factory.mktemp("models") / "tiny"
    build_tiny_pipeline().save_pretrained(path)
    return path
