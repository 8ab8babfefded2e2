"""Session fixtures for cafe_core tests: each tiny model is built and saved ONCE, then loaded from disk.

Loading from the saved folder (not from ``build_tiny`` in memory) is what the app and trainer do, so
the tests exercise the real ``CafeModel.load`` path.
"""

from __future__ import annotations

import os

# Telemetry off, nothing fetched from the hub (tests must pass without internet); set before any HF import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from cafe_core import CafeModel  # noqa: E402
from cafe_core.tiny import save_tiny  # noqa: E402

ARCHS = ("llava", "llava-onevision", "smolvlm")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict:
    """``{preset: folder}`` of saved tiny models (model + processor), built once per session."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: save_tiny(root / arch, arch, seed=0) for arch in ARCHS}


@pytest.fixture(scope="session")
def cafe_models(tiny_dirs) -> dict:
    """``{preset: CafeModel}`` loaded from the saved folders on CPU in float32."""
    return {arch: CafeModel.load(d, device="cpu", dtype="float32") for arch, d in tiny_dirs.items()}


@pytest.fixture(scope="session")
def ov_model(cafe_models) -> CafeModel:
    return cafe_models["llava-onevision"]


def noise_image(seed: int, width: int, height: int) -> Image.Image:
    """A deterministic RGB image with structure (so that different sizes give different features)."""
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


# Sizes chosen to land on different anyres grids of tiny LLaVA-OneVision (pinpoints 32x32, 32x64, 64x32):
# square, wide, tall, small, large.
MIXED_SIZES = ((32, 32), (90, 40), (30, 100), (20, 17), (256, 192))


@pytest.fixture(scope="session")
def mixed_images() -> list:
    return [noise_image(i, w, h) for i, (w, h) in enumerate(MIXED_SIZES)]
