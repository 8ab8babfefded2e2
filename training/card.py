"""The model card (README.md) written into every final model folder."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import yaml

from cafe_core import prompts

from .config import TrainConfig
from .eval_metrics import HEADLINE_METRICS


def write_model_card(folder: Path, cfg: TrainConfig, steps: int, eval_metrics: dict | None) -> Path:
    """Base model, data, losses, hyperparameters and (when evaluated) an eval table."""
    losses = {"cafe": f"L_lm + {cfg.con_weight} * L_con (CAFe)", "contrastive": "L_con only (embedder)",
              "lm": "L_lm only (plain SFT)"}[cfg.loss]
    lines = [
        "---", "library_name: transformers", "pipeline_tag: image-text-to-text", "tags: [cafe, retrieval, vlm]", "---",
        f"# CAFe model fine-tuned from `{cfg.base_model}`", "",
        "One vision-language model that both **embeds** (retrieval) and **generates** (answers), trained with",
        "Contrastive-Autoregressive Fine-tuning (arXiv 2503.19900) by this repository's `training` module.", "",
        "## Use", "```python",
        "from cafe_core import CafeModel",
        f"m = CafeModel.load('{folder.name if folder.name != '.final.tmp' else 'final'}')",
        "m.embed_texts(['a red circle']); m.generate('What color is the background?', [image])", "```",
        "It also loads with plain `AutoModelForImageTextToText.from_pretrained` + `AutoProcessor.from_pretrained`.",
        f"Embeddings: last-layer post-norm hidden state of the closing `<|im_end|>` under the prompts of "
        f"`cafe_core/prompts.py` (version `{prompts.PROMPT_VERSION}`), L2-normalised.", "",
        "## Training", "",
        f"- base model: `{cfg.base_model}`", f"- data: `{cfg.data}` (augment: {cfg.augment})",
        f"- loss: {losses}; forward: {cfg.forward}", f"- parameters: {cfg.mode}; optimizer {cfg.optim}",
        f"- steps: {steps}, batch {cfg.batch_size} x accum {cfg.grad_accum}, lr {cfg.lr} (vision {cfg.vision_lr}), "
        f"{cfg.schedule} schedule, warmup {cfg.warmup_ratio}, seed {cfg.seed}", "",
        "<details><summary>full config</summary>", "", "```yaml", yaml.safe_dump(asdict(cfg), sort_keys=False).strip(),
        "```", "</details>", "",
    ]
    if (folder / "training_curves.png").exists():
        lines += ["![training curves](training_curves.png)", ""]
    if eval_metrics:
        lines += [f"## Evaluation (`python -m training eval`, data `{cfg.eval_data}`)", "", "| metric | value |", "|---|---|"]
        for k in HEADLINE_METRICS:
            if isinstance(eval_metrics.get(k), (int, float)):
                lines.append(f"| {k} | {eval_metrics[k]:.3f} |")
        lines.append("")
    path = folder / "README.md"
    path.write_text("\n".join(lines))
    return path
