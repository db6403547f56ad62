import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models run fastest single-threaded; subprocesses (torchrun, resume tests) inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The cache of verified checksums (nami_core.checksums) lives with the test run, not in ~/.cache.
if "NAMI_CACHE_DIR" not in os.environ:
    os.environ["NAMI_CACHE_DIR"] = tempfile.mkdtemp(prefix="nami-test-cache-")
    atexit.register(shutil.rmtree, os.environ["NAMI_CACHE_DIR"], True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved random 3-stage pixel-space model (16/32/64 px, minilm text) for CLI and pipeline tests."""
    from tests.helpers import build_tiny_pipeline

    path = tmp_path_factory.mktemp("models") / "tiny"
    build_tiny_pipeline().save_pretrained(path)
    return path
