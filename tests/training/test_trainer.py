"""The trainer end to end on tiny models: CLI run + Hugging Face folder + model card, loss modes, exact
resume after kill -9, parameter modes (LoRA, QLoRA, 8-bit AdamW, vision learning rate), bad input and
NaN handling, and gradient accumulation.

Real processes where the behaviour is about processes (CLI, exit codes, SIGKILL, plain-transformers
loading); in-process ``Trainer`` runs elsewhere, to stay fast.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from training.__main__ import main
from training.schedule import lr_factor

from .conftest import (
    PYTHON,
    REPO,
    child_env,
    folder_weights,
    folder_weights_named,
    max_abs_diff,
    read_metrics,
    run_cli,
    set_args,
    settings,
    train_in_process,
)

try:
    import bitsandbytes  # noqa: F401

    HAVE_BNB = True
except Exception:  # missing, or a backend that fails to initialise
    HAVE_BNB = False

# Loads model folders with plain transformers in a fresh interpreter that imports none of our packages
# (cwd outside the repo, no PYTHONPATH) and reports what it saw as JSON.
PLAIN_HF_LOAD = r"""
import json, sys
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

report = {}
for folder in sys.argv[1:]:
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the photo."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text], images=[Image.new("RGB", (80, 60), (200, 30, 30))], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    report[folder] = {
        "class": type(model).__name__,
        "finite": bool(torch.isfinite(logits).all()),
        "new_tokens": int(generated.shape[1] - inputs["input_ids"].shape[1]),
        "quantized": getattr(model.config, "quantization_config", None) is not None,
        "dtypes": sorted({str(p.dtype) for p in model.parameters()}),
    }
ours = sorted(m for m in sys.modules if m.split(".")[0] in ("cafe_core", "training", "data", "app"))
print(json.dumps({"folders": report, "our_modules": ours}))
"""


def plain_hf_load(folders: list[Path], tmp_path: Path) -> dict:
    env = {k: v for k, v in child_env().items() if k != "PYTHONPATH"}
    proc = subprocess.run([PYTHON, "-c", PLAIN_HF_LOAD, *map(str, folders)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["our_modules"] == []
    for folder in folders:
        r = report["folders"][str(folder)]
        assert r["finite"] and r["new_tokens"] >= 1 and not r["quantized"], r
    return report["folders"]


def assert_components_consistent(records: list[dict], loss: str, con_weight: float = 1.0):
    for r in records:
        if loss == "cafe":
            assert r["loss"] == pytest.approx(r["lm_loss"] + con_weight * r["con_loss"], abs=1e-5)
        elif loss == "contrastive":
            assert "lm_loss" not in r and r["loss"] == pytest.approx(r["con_loss"], abs=1e-5)
        else:
            assert "con_loss" not in r and r["loss"] == pytest.approx(r["lm_loss"], abs=1e-5)


# ------------------------------------------------------------------ the CLI, the folder, the card
def test_cli_train_writes_a_standard_hf_folder_with_card_metrics_and_plot(train_data, eval_data, tiny_base, tmp_path):
    out = tmp_path / "run"
    overrides = {"data": str(train_data), "out_dir": str(out), "max_steps": 4, "save_every": 2, "batch_size": 4,
                 "log_every": 1, "image_max_side": 96, "eval_data": str(eval_data), "eval_max_questions": 6,
                 "eval_max_photos": 8, "device": "cpu"}
    proc = run_cli(["train", "--config", str(REPO / "training/configs/tiny-cpu.yaml"), *set_args(overrides)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = out / "final"
    assert f"final model: {final}" in proc.stdout

    # metrics.jsonl: one line per step with every logged quantity, finite, lr on the schedule.
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    from training.config import load_config

    cfg = load_config(REPO / "training/configs/tiny-cpu.yaml", [f"{k}={v}" for k, v in overrides.items()])
    for r in records:
        for key in ("loss", "lm_loss", "con_loss", "lr", "samples_per_s", "grad_norm"):
            assert math.isfinite(r[key]), (key, r)
        assert r["samples_per_s"] > 0
        factor = lr_factor(r["step"] - 1, 4, cfg.warmup_ratio, cfg.min_lr_ratio, cfg.schedule)
        assert r["lr"] == pytest.approx(cfg.lr * factor, rel=1e-9)
    assert_components_consistent(records, "cafe")

    # Checkpoints at steps 2 and 4, LATEST pointing at the last.
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-000002", "step-000004"]
    assert (ckpts / "LATEST").read_text().strip() == "step-000004"

    # The final folder: weights + processor + card + curves + eval.
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "README.md",
                 "training_curves.png", "eval.json"):
        assert (final / name).is_file(), name
    png = (final / "training_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    card = (final / "README.md").read_text()
    for needle in ("base model: `tiny:llava`", f"data: `{train_data}`", "loss: L_lm + 1.0 * L_con (CAFe)",
                   "steps: 4, batch 4 x accum 1, lr 0.001 (vision 0.001)", "parameters: full",
                   "```yaml", "con_weight: 1.0", "![training curves](training_curves.png)",
                   f"## Evaluation (`python -m training eval`, data `{eval_data}`)", "| t2i_recall@1 |",
                   "| pope_adversarial_f1 |", "| modality_gap |"):
        assert needle in card, needle
    evaluation = json.loads((final / "eval.json").read_text())
    assert f"| t2i_recall@1 | {evaluation['t2i_recall@1']:.3f} |" in card

    # It trained, and the folder is what a plain transformers user loads.
    assert max_abs_diff(folder_weights(final), folder_weights(tiny_base)) > 1e-4
    report = plain_hf_load([final], tmp_path)
    assert report[str(final)]["class"] == "LlavaForConditionalGeneration"


# ------------------------------------------------------------------ losses
def test_loss_modes_and_con_weight_log_consistent_components(train_data, tmp_path):
    runs = {}
    for name, loss, cw in (("cafe", "cafe", 1.0), ("cafe_half", "cafe", 0.5), ("contrastive", "contrastive", 1.0),
                           ("lm", "lm", 1.0)):
        t = train_in_process(settings(train_data, tmp_path / name, loss=loss, con_weight=cw, max_steps=2))
        runs[name] = read_metrics(t.out)
        assert [r["step"] for r in runs[name]] == [1, 2]
        assert_components_consistent(runs[name], loss, cw)
    first = {k: v[0] for k, v in runs.items()}
    # Step 1 sees the same batch and the same initial weights in every mode, so the components agree.
    assert first["contrastive"]["con_loss"] == pytest.approx(first["cafe"]["con_loss"], abs=1e-5)
    assert first["cafe_half"]["con_loss"] == pytest.approx(first["cafe"]["con_loss"], abs=1e-5)
    assert first["lm"]["lm_loss"] == pytest.approx(first["cafe"]["lm_loss"], abs=1e-5)
    assert first["cafe_half"]["loss"] == pytest.approx(first["cafe"]["lm_loss"] + 0.5 * first["cafe"]["con_loss"], abs=1e-5)
    # Step 2 follows different updates: the weight and the mode really change the objective.
    second = {k: v[1] for k, v in runs.items()}
    assert abs(second["cafe_half"]["con_loss"] - second["cafe"]["con_loss"]) > 1e-4
    assert abs(second["lm"]["lm_loss"] - second["cafe"]["lm_loss"]) > 1e-4
    assert abs(second["contrastive"]["con_loss"] - second["cafe"]["con_loss"]) > 1e-4


# ------------------------------------------------------------------ resume after SIGKILL
RESUME_STEPS = 12  # 40 photos / batch 4 = 10 steps per epoch: the run crosses an epoch boundary


def _resume_settings(train_data, out):
    return settings(train_data, out, max_steps=RESUME_STEPS, save_every=3, keep_checkpoints=2, threads=1)


def test_resume_after_kill_9_matches_an_uninterrupted_run(train_data, tmp_path):
    ref_out, out = tmp_path / "uninterrupted", tmp_path / "killed"
    proc = run_cli(["train", *set_args(_resume_settings(train_data, ref_out))])
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Start the same run, kill -9 it as soon as its first checkpoint exists.
    child = subprocess.Popen([PYTHON, "-m", "training", "train", *set_args(_resume_settings(train_data, out))],
                             cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "checkpoints" / "LATEST"
    deadline = time.monotonic() + 180
    while not latest.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    assert not (out / "final").exists(), "the run finished before the kill; the test needs a slower run"
    killed_at = int(latest.read_text().strip().split("-")[1])
    assert 3 <= killed_at < RESUME_STEPS

    proc = run_cli(["train", "--resume", *set_args(_resume_settings(train_data, out))])
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed_from = int(proc.stderr.split("resumed from ")[1].split(" at step ")[1].split()[0])
    assert resumed_from >= killed_at and resumed_from % 3 == 0

    ref, got = read_metrics(ref_out), read_metrics(out)
    assert [r["step"] for r in got] == list(range(1, RESUME_STEPS + 1))  # no duplicate or missing lines
    for a, b in zip(ref, got):
        if a["step"] > resumed_from:
            for key in ("loss", "lm_loss", "con_loss", "lr"):
                assert b[key] == pytest.approx(a[key], abs=1e-5), (a["step"], key)
    assert ref[-1]["epoch"] == got[-1]["epoch"] == 1
    assert max_abs_diff(folder_weights(ref_out / "final"), folder_weights(out / "final")) <= 1e-6


# ------------------------------------------------------------------ parameter modes
@pytest.fixture(scope="module")
def adapter_runs(train_data, tiny_base, tmp_path_factory):
    """Two steps each of LoRA, LoRA + vision adapters, and QLoRA (4-bit base; needs a saved base folder)."""
    root = tmp_path_factory.mktemp("adapters")
    runs = {
        "lora": train_in_process(settings(train_data, root / "lora", mode="lora", max_steps=2)),
        "lora_vision": train_in_process(settings(train_data, root / "lora_vision", mode="lora", lora_vision=True,
                                                 max_steps=2)),
    }
    if HAVE_BNB:
        runs["qlora"] = train_in_process(settings(train_data, root / "qlora", mode="qlora", base_model=str(tiny_base),
                                                  max_steps=2))
    return runs


def _changed(final: dict, base: dict, fragment: str, tol: float = 1e-6) -> bool:
    keys = [k for k in base if fragment in k]
    assert keys, fragment
    return max((final[k].float() - base[k].float()).abs().max().item() for k in keys) > tol


def _numel(params) -> int:
    return sum(p.numel() for p in params)


@pytest.mark.parametrize("mode", ["lora", "lora_vision"])
def test_lora_trains_only_adapters_and_projector(adapter_runs, tiny_base, mode):
    trainer = adapter_runs[mode]
    # The checkpoint holds what trains: LoRA A/B + the projector copy; the optimizer holds exactly that.
    adapter = folder_weights_named(trainer.out / "checkpoints" / "step-000002" / "model", "adapter_model.safetensors")
    assert all("lora_" in k or "multi_modal_projector" in k for k in adapter), sorted(adapter)
    assert any("language_model" in k and "lora_A" in k for k in adapter)
    assert any("multi_modal_projector" in k for k in adapter)
    assert any("vision_tower" in k and "lora_A" in k for k in adapter) == (mode == "lora_vision")
    groups = {g["name"]: g["params"] for g in trainer.optimizer.param_groups}
    assert _numel(p for ps in groups.values() for p in ps) == _numel(adapter.values())
    if mode == "lora_vision":  # the vision adapters train at vision_lr, in their own group
        assert _numel(groups["vision"]) == _numel(t for k, t in adapter.items() if "vision_tower" in k)
        assert trainer.base_lrs == [trainer.cfg.lr, trainer.cfg.vision_lr]
    else:
        assert set(groups) == {"main"}
    # Merged final folder: no adapter tensors, LM (and vision when asked) changed, embeddings untouched.
    final, base = folder_weights(trainer.final), folder_weights(tiny_base)
    assert not any("lora" in k for k in final) and set(final) == set(base)
    assert _changed(final, base, "language_model.model.layers.0.self_attn.q_proj.weight")
    assert _changed(final, base, "multi_modal_projector.linear_1.weight")
    assert _changed(final, base, "vision_tower.encoder.layers.0.self_attn.q_proj.weight") == (mode == "lora_vision")
    assert not _changed(final, base, "embed_tokens", tol=0.0)


@pytest.mark.skipif(not HAVE_BNB, reason="bitsandbytes cannot be imported here; see test_bnb_modes_unavailable")
def test_qlora_runs_on_cpu_with_a_4bit_base_and_exports_a_merged_full_precision_folder(adapter_runs, tiny_base):
    import bitsandbytes as bnb

    trainer = adapter_runs["qlora"]
    q_proj = trainer.model.get_base_model().model.language_model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit) and q_proj.base_layer.weight.quant_type == "nf4"
    projector = trainer.model.get_base_model().model.multi_modal_projector
    assert isinstance(projector.original_module.linear_1, torch.nn.Linear)
    assert not isinstance(projector.original_module.linear_1, bnb.nn.Linear4bit)  # kept trainable
    assert all(math.isfinite(r["loss"]) for r in read_metrics(trainer.out))
    final, base = folder_weights(trainer.final), folder_weights(tiny_base)
    assert set(final) == set(base) and all(v.dtype == torch.float32 for v in final.values())
    config = json.loads((trainer.final / "config.json").read_text())
    assert "quantization_config" not in config
    # Merged into the full-precision base: untouched layers are bit-identical to it (not nf4-rounded).
    assert not _changed(final, base, "vision_tower.encoder.layers.0.self_attn.q_proj.weight", tol=0.0)
    assert _changed(final, base, "language_model.model.layers.0.self_attn.q_proj.weight")
    assert _changed(final, base, "multi_modal_projector.linear_1.weight")


def test_merged_adapter_folders_load_with_plain_transformers(adapter_runs, tmp_path):
    plain_hf_load([t.final for t in adapter_runs.values()], tmp_path)


@pytest.mark.skipif(not HAVE_BNB, reason="bitsandbytes cannot be imported here; see test_bnb_modes_unavailable")
def test_adamw8bit_runs_on_cpu(train_data, tiny_base, tmp_path):
    import bitsandbytes as bnb

    trainer = train_in_process(settings(train_data, tmp_path / "8bit", optim="adamw8bit", max_steps=2))
    assert isinstance(trainer.optimizer, bnb.optim.AdamW8bit)
    # 8-bit state for the big tensors (bitsandbytes keeps tensors under 4096 values in 32 bit).
    big = next(p for p in trainer.model.parameters() if p.numel() >= 4096)
    assert trainer.optimizer.state[big]["state1"].dtype == torch.uint8
    assert all(math.isfinite(r["loss"]) for r in read_metrics(trainer.out))
    assert max_abs_diff(folder_weights(trainer.final), folder_weights(tiny_base)) > 1e-4


@pytest.mark.skipif(HAVE_BNB, reason="bitsandbytes works here: QLoRA and 8-bit AdamW are tested for real")
@pytest.mark.parametrize("item", ["mode=qlora", "optim=adamw8bit"])
def test_bnb_modes_unavailable(train_data, tmp_path, capsys, item):
    assert main(["train", *set_args(settings(train_data, tmp_path / "x")), "--set", item]) == 2
    assert "needs bitsandbytes" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # failed before any work


def test_vision_tower_trains_at_vision_lr_in_full_mode(train_data, tmp_path):
    # Adam's first step moves every weight with a non-tiny gradient by ~lr, so the largest change per
    # group shows the learning rate that group really used.
    lr, vision_lr = 1e-2, 1e-4
    from cafe_core.tiny import build_tiny

    base = build_tiny("llava")[0].state_dict()
    trainer = train_in_process(settings(train_data, tmp_path / "full", lr=lr, vision_lr=vision_lr, max_steps=1,
                                        grad_clip=0.0))
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    named = {id(p): n for n, p in trainer.model.named_parameters()}
    vision = {named[id(p)] for p in groups["vision"]["params"]}
    main_group = {named[id(p)] for p in groups["main"]["params"]}
    assert vision == {n for n in named.values() if "vision_tower" in n}
    assert main_group == set(named.values()) - vision
    assert trainer.base_lrs == [lr, vision_lr]
    final = trainer.model.state_dict()
    moved = {g: max((final[n] - base[n]).abs().max().item() for n in names) for g, names in
             (("vision", vision), ("main", main_group))}
    assert 0.5 * vision_lr < moved["vision"] <= 1.01 * vision_lr, moved
    assert 0.5 * lr < moved["main"] <= 1.01 * lr, moved


# ------------------------------------------------------------------ bad input
def test_missing_dataset_path_exits_2(train_data, tmp_path, capsys):
    missing = tmp_path / "no_such_album"
    assert main(["train", *set_args(settings(missing, tmp_path / "out", max_steps=1))]) == 2
    err = capsys.readouterr().err
    assert f"error: {missing}: no such file or folder" in err and "Traceback" not in err


def test_empty_dataset_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty_album"
    empty.mkdir()
    assert main(["train", *set_args(settings(empty, tmp_path / "out", max_steps=1))]) == 2
    assert "zero usable samples" in capsys.readouterr().err


def test_dataset_smaller_than_a_batch_exits_2(train_data, tmp_path, capsys):
    assert main(["train", *set_args(settings(train_data, tmp_path / "out", batch_size=64, max_steps=1))]) == 2
    assert "has 40 samples, fewer than one batch (batch_size 64" in capsys.readouterr().err


@pytest.mark.parametrize("which", ["missing", "not_a_model"])
def test_bad_base_model_exits_2(train_data, tmp_path, capsys, which):
    base = tmp_path / "no_model" if which == "missing" else train_data
    assert main(["train", *set_args(settings(train_data, tmp_path / "out", base_model=str(base), max_steps=1))]) == 2
    err = capsys.readouterr().err
    assert ("does not exist" if which == "missing" else "is not a model folder") in err
    assert "Traceback" not in err


def test_nan_loss_exits_3_and_keeps_the_last_good_checkpoint(train_data, tmp_path):
    # lr 1e20 (constant): step 1 runs on the initial weights (finite loss) and is checkpointed; its update
    # blows the weights up, so step 2's loss is NaN/inf.
    out = tmp_path / "diverges"
    proc = run_cli(["train", *set_args(settings(train_data, out, lr=1e20, vision_lr=1e20, schedule="constant",
                                                max_steps=6, save_every=1))])
    assert proc.returncode == 3, proc.stderr[-3000:]
    kept = out / "checkpoints" / "step-000001"
    assert (f"error: the loss became NaN/inf at step 2; stopping (the last good checkpoint is {kept})"
            in proc.stderr)
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["LATEST", "step-000001"]
    assert (out / "checkpoints" / "LATEST").read_text().strip() == "step-000001"
    assert all(torch.isfinite(t).all() for t in folder_weights(kept / "model").values())
    assert [r["step"] for r in read_metrics(out)] == [1] and not (out / "final").exists()


# ------------------------------------------------------------------ gradient accumulation
def test_grad_accumulation_matches_the_bigger_batch_for_the_lm_loss(train_data, tmp_path):
    """batch 4 x accum 2 == batch 8 x accum 1 for L_lm: same 8 samples, and the trainer weights each
    micro-batch by its share of supervised tokens. (Not for L_con: accumulation does not add negatives,
    so two InfoNCE losses over 4 are not one over 8, by design, as in the paper.)"""
    from cafe_core.tiny import build_tiny

    base = build_tiny("llava")[0].state_dict()
    lr = 1e-3
    one = train_in_process(settings(train_data, tmp_path / "b8", loss="lm", batch_size=8, grad_accum=1, max_steps=1))
    two = train_in_process(settings(train_data, tmp_path / "b4x2", loss="lm", batch_size=4, grad_accum=2, max_steps=1))
    assert read_metrics(two.out)[0]["lm_loss"] == pytest.approx(read_metrics(one.out)[0]["lm_loss"], abs=1e-5)
    assert read_metrics(two.out)[0]["grad_norm"] == pytest.approx(read_metrics(one.out)[0]["grad_norm"], rel=1e-4)
    w1, w2 = one.model.state_dict(), two.model.state_dict()
    update = max((w1[k] - base[k]).abs().max().item() for k in w1)
    assert update > 0.5 * lr  # a real step happened
    # Adam's first step is ~lr * sign(grad), so weights whose gradient is ~1e-8 amplify float rounding
    # (measured max diff ~4e-6 = 0.004 lr). Averaging the two micro-batch means instead (the old trainer)
    # gave a 16% different gradient norm and flipped weights by 2 lr.
    assert max_abs_diff(w1, w2) < 1e-2 * lr
