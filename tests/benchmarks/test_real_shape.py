"""benchmarks/real_shape.py end to end at the real checkpoints' widths, reduced to 2 layers, 1 photo and the
full training mode (LoRA/QLoRA are run by the benchmark itself; tests/training covers them on tiny models):
image token counts are what the real processor classes write, FLOPs are positive and cheaper on base
crops, every operation (CafeModel, the app's CLI, a Trainer step) ran and took finite time, and the
training step's losses are finite."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPECS = {  # spec name -> (name in the report, text hidden size, vision hidden size, image tokens of one base crop)
    "llava-onevision-0.5b-si": ("llava-onevision-qwen2-0.5b-si", 896, 1152, 729 + 1),  # 27x27 patches + newline
    "smolvlm-256m-instruct": ("smolvlm-256m-instruct", 576, 768, 64),  # 32x32 patches / 4^2 (pixel shuffle)
}
OPS = ("embed_images_native", "embed_images_base", "embed_texts", "generate", "stream", "reply_logprob")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, Path]:
    work = tmp_path_factory.mktemp("real_shape")
    out = work / "report.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "real_shape.py"), "--model", *SPECS, "--layers", "2",
           "--photos", "1", "--train-modes", "full", "--new-tokens", "4", "--work", str(work), "--keep-models",
           "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.setdefault("OMP_NUM_THREADS", "2")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text()), work


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
@pytest.mark.parametrize("spec", list(SPECS))
def test_real_shape_report(report, spec):
    data, work = report
    name, text_hidden, vision_hidden, base_tokens = SPECS[spec]
    r = data["models"][name]
    assert "error" not in r, r.get("error")
    assert data["peak_tflops"] == "unknown" and data["layers"] == 2

    # The saved folder is the real architecture at reduced depth: published widths, two layers each.
    config = json.loads((work / name / "model" / "config.json").read_text())
    assert config["text_config"]["hidden_size"] == text_hidden and config["vision_config"]["hidden_size"] == vision_hidden
    assert config["text_config"]["num_hidden_layers"] == 2 == config["vision_config"]["num_hidden_layers"]

    # Image tokens per photo: what the real processor class, loaded from the folder, writes for that photo.
    from transformers import AutoConfig, AutoProcessor

    from cafe_core import prompts
    from cafe_core.family import family_for
    from data.images import load_image

    processor = AutoProcessor.from_pretrained(work / name / "model")
    chat = family_for(AutoConfig.from_pretrained(work / name / "model")).chat
    photo = load_image(sorted((work / "album" / "photos").glob("*.jpg"))[0])  # upright, RGB
    assert list(photo.size) == r["photo_sizes"][0]
    enc = processor(text=[prompts.image_embedding_prompt(chat)], images=[[photo]], return_tensors="pt")
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    per = r["per_photo"]
    assert per["native"]["image_tokens"] == [int((enc["input_ids"] == image_id).sum())]
    assert per["native"]["prompt_tokens"] == [int(enc["attention_mask"].sum())]
    assert per["base"]["image_tokens"] == [base_tokens]
    assert per["base"]["crops"] == [1] and per["native"]["crops"][0] > 1  # the sample photo is split natively

    # FLOPs: positive, and reading one base crop is cheaper than the native crops.
    assert all(_finite_positive(f) for k in ("native", "base") for f in per[k]["flops"])
    assert per["base"]["flops"][0] < per["native"]["flops"][0]

    # Every model operation ran in finite time, did the work the FLOP counter says, and gave sane results.
    for op in OPS:
        o = r["ops"][op]
        assert _finite_positive(o["seconds"]) and _finite_positive(o["flops"]) and _finite_positive(o["flops_per_s"]), op
        assert o["peak_rss_mib"] >= o["rss_before_mib"] > 0 and o["of_peak"] is None
    assert r["ops"]["generate"]["new_tokens"] >= 1 and r["ops"]["stream"]["equals_generate"]
    assert r["ops"]["reply_logprob"]["finite"]
    assert _finite_positive(r["build"]["seconds"]) and _finite_positive(r["load"]["seconds"])

    # The app's CLI on the saved folder: one photo indexed, found, and asked about.
    cli = r["cli"]
    for op in ("index", "search", "ask"):
        assert cli[op]["returncode"] == 0 and _finite_positive(cli[op]["seconds"]), cli[op]
        assert _finite_positive(cli[op]["peak_rss_mib"])
    assert cli["index"]["indexed"] == 1 and cli["search"]["results"] == 1 and cli["ask"]["sources"] >= 1

    # One full fine-tuning CAFe step through the Trainer: finite losses, both parts of the loss present.
    train = r["train"]["full"]
    step = train["steps"][0]
    assert train["finite"] and all(math.isfinite(step[k]) for k in ("loss", "lm_loss", "con_loss", "grad_norm"))
    assert step["loss"] == pytest.approx(step["lm_loss"] + step["con_loss"], rel=1e-5)
    assert _finite_positive(step["seconds"]) and _finite_positive(step["flops"])
    assert step["flops"] == 3 * sum(step["forward_flops"].values())
    assert train["trainable_params"] == r["params"] and _finite_positive(train["peak_rss_mib"])
