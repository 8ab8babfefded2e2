"""A saved CAFe/tiny folder is a plain Hugging Face checkpoint: it loads with AutoModelForImageTextToText +
AutoProcessor, offline, in a process that imports none of our code, and gives the same embeddings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cafe_core import prompts

from .conftest import ARCHS, noise_image

# Runs with `python -I` from a neutral cwd: no repo on sys.path, so our packages cannot be imported.
PLAIN_HF_SCRIPT = r"""
import json, sys
import numpy as np, torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

results = {}
for folder, prompt in zip(sys.argv[1::2], sys.argv[2::2]):
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder)
    image = Image.fromarray(np.random.RandomState(5).randint(0, 256, (40, 90, 3), dtype=np.uint8), "RGB")
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    with torch.no_grad():
        hidden = model.model(**inputs).last_hidden_state[0, -1]
        gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    chat = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}], add_generation_prompt=True)
    results[folder] = {"class": type(model).__name__, "emb": torch.nn.functional.normalize(hidden, dim=-1).tolist(),
                       "new_tokens": gen.shape[1] - inputs["input_ids"].shape[1], "chat": chat}
ours = [m for m in sys.modules if m.split(".")[0] in ("cafe_core", "app", "training", "data")]
print(json.dumps({"results": results, "ours": ours}))
"""


@pytest.fixture(scope="module")
def plain_hf(tiny_dirs, cafe_models, tmp_path_factory) -> dict:
    """Run PLAIN_HF_SCRIPT once over every saved folder (one interpreter start-up)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TRANSFORMERS_OFFLINE="1")
    args = [x for a in ARCHS for x in (str(tiny_dirs[a]), prompts.image_embedding_prompt(cafe_models[a].chat))]
    proc = subprocess.run(
        [sys.executable, "-I", "-c", PLAIN_HF_SCRIPT, *args],
        cwd=tmp_path_factory.mktemp("neutral_cwd"), env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_plain_process_imported_none_of_our_code(plain_hf):
    assert plain_hf["ours"] == []


@pytest.mark.parametrize("arch", ARCHS)
def test_saved_folder_loads_with_plain_transformers(plain_hf, tiny_dirs, cafe_models, arch):
    out = plain_hf["results"][str(tiny_dirs[arch])]
    expected_class = {"llava": "LlavaForConditionalGeneration",
                      "llava-onevision": "LlavaOnevisionForConditionalGeneration",
                      "smolvlm": "Idefics3ForConditionalGeneration"}[arch]
    assert out["class"] == expected_class
    assert 1 <= out["new_tokens"] <= 3
    # The stored chat template renders the same conversation format our prompts use.
    assert out["chat"] == prompts.generation_prompt("hi", n_images=1, chat=cafe_models[arch].chat)
    # Plain transformers + the CAFe pooling rule = CafeModel.embed_images.
    ours = cafe_models[arch].embed_images([noise_image(5, 90, 40)])[0]
    assert np.abs(np.asarray(out["emb"], dtype=np.float32) - ours).max() < 1e-5
