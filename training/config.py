"""Training configuration: one dataclass, loaded from YAML and overridden by ``--set key=value``."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A config file or override is unusable (unknown key, bad value)."""


@dataclass
class TrainConfig:
    # --- model
    base_model: str = "tiny:llava"  # hub id, local folder, or tiny:<preset> (cafe_core.tiny)
    # --- data
    data: str = ""  # any format data.dataset.open_dataset reads (sample-world synth folder, LLaVA JSON, JSONL/CSV, sidecar folder)
    augment: str = "none"  # "sampleworld": the recipe of training/sampleworld.py (needs ground_truth.json)
    image_max_side: int = 512  # decode-time downscale of large photos
    # Cap on a sample's conversation in tokens, image tokens included (0 = none; training/seqlen.py): a longer
    # conversation keeps its first exchange and as many following ones as fit (turns dropped from the end);
    # a sample whose first exchange alone is longer is skipped. Both counts are logged and in metrics.jsonl.
    max_seq_len: int = 0
    # --- sample-world recipe (augment: sampleworld; see training.sampleworld.Recipe)
    max_qa_turns: int = 0  # >0: keep this many random QA turns per conversation (0: 6)
    caption_turn_prob: float = 1.0  # chance to keep a "Describe the photo." turn
    p_full_caption: float = 0.5  # contrastive text is a full caption (else a short object query)
    p_question_caption: float = 0.0  # contrastive text is a question naming the photo
    p_pair: float = 0.0  # contrastive text names 2-3 of the photo's objects
    p_attribute: float = 0.0  # contrastive text names one color or one shape alone
    p_hard: float = 0.0  # an object-naming contrastive text gets a hard negative (one attribute changed)
    p_grounded: float = 0.0  # conversation opens with the app's grounded-answer format
    p_multi_photo: float = 0.0  # ... over 2-3 photos, of which the question names one
    p_yes_no: float = 0.0  # chance a QA turn is a yes/no question, half "yes" half "no"
    position_turns: int = 0  # "What is on the left?" turns added per sample
    extra_turns: int = 0  # attribute and position turns (data.queries.training_questions) per sample
    # --- losses
    loss: str = "cafe"  # cafe | contrastive | lm
    con_weight: float = 1.0
    lm_weight: float = 1.0
    # >0: auxiliary loss that keeps each image token's grid row and column readable from the projector
    # outputs (training/token_position.py; plain LLaVA, forward: shared); the head is not exported
    token_position_weight: float = 0.0
    # where that loss's gradient goes: "tower" (projector and vision tower) or "projector" (the head reads the
    # projector re-applied to the tower's detached outputs, so only the projector learns to keep the place)
    token_position_reach: str = "tower"
    gather_with_grad: bool = False  # see cafe_core.losses (gradient scaling across ranks)
    forward: str = "shared"  # shared (vision once per image) | tree (also one LM pass: prompts share the prefix) | naive (reference)
    # --- parameters
    mode: str = "full"  # full | lora | qlora
    lr: float = 1e-5
    vision_lr: float = 2e-6  # vision tower learning rate (full fine-tune; or LoRA with lora_vision)
    weight_decay: float = 0.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_vision: bool = False
    merge_lora: bool = True  # final folder: LoRA merged into the base weights
    optim: str = "adamw"  # adamw | adamw8bit (bitsandbytes)
    # --- schedule
    epochs: float = 1.0
    max_steps: int = 0  # >0 overrides epochs
    stop_at: int = 0  # >0: end the run (final export) at this step; the LR schedule still spans max_steps
    warmup_ratio: float = 0.03
    schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.0
    batch_size: int = 8  # per process, per micro-step
    grad_accum: int = 1
    grad_clip: float = 1.0
    grad_checkpointing: bool = False
    precision: str = "auto"  # auto (bf16 on capable GPUs, fp32 on CPU) | fp32 | bf16 | fp16
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch.set_num_threads when > 0
    # --- distributed
    distributed: str = "ddp"  # ddp | fsdp (for models that do not fit one GPU)
    # --- output
    out_dir: str = "runs/default"
    save_every: int = 200  # optimizer steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_data: str = ""  # sample-world split evaluated at the end (table goes in the model card)
    eval_max_questions: int = 300
    eval_max_photos: int = 300
    save_dtype: str = "float32"  # dtype of the final folder's weights (bfloat16 halves its size)
    notes: dict = field(default_factory=dict)  # free-form, copied into the model card

    def validate(self) -> "TrainConfig":
        choices = {
            "loss": ("cafe", "contrastive", "lm"), "forward": ("shared", "tree", "naive"), "mode": ("full", "lora", "qlora"),
            "optim": ("adamw", "adamw8bit"), "schedule": ("cosine", "constant"), "augment": ("none", "sampleworld"),
            "precision": ("auto", "fp32", "bf16", "fp16"), "distributed": ("ddp", "fsdp"),
            "save_dtype": ("float32", "bfloat16", "float16"), "token_position_reach": ("tower", "projector"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key}={getattr(self, key)!r} is not one of {allowed}")
        if not self.data:
            raise ConfigError("no training data: set data: PATH in the config or --set data=PATH")
        if self.batch_size < 1 or self.grad_accum < 1 or self.log_every < 1:
            raise ConfigError("batch_size, grad_accum and log_every must be >= 1")
        for key in ("lr", "vision_lr", "weight_decay", "con_weight", "lm_weight", "grad_clip", "max_steps",
                    "save_every", "epochs", "max_seq_len", "token_position_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 0")
        for key in ("warmup_ratio", "min_lr_ratio"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{key}={getattr(self, key)} must be between 0 and 1")
        if self.token_position_weight > 0 and self.forward != "shared":
            raise ConfigError("token_position_weight needs forward: shared (the pass that keeps the image tokens)")
        if self.token_position_weight > 0 and self.distributed == "fsdp":
            raise ConfigError("token_position_weight is not supported with distributed: fsdp (its head would be sharded "
                              "into the exported weights); use ddp")
        if self.max_steps == 0 and self.epochs == 0:
            raise ConfigError("set max_steps or epochs > 0")
        try:
            self.recipe()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return self

    def recipe(self):
        """The sample-world recipe these settings describe (training.sampleworld.Recipe), validated."""
        from .sampleworld import Recipe

        names = ("caption_turn_prob", "p_full_caption", "p_question_caption", "p_pair", "p_attribute", "p_hard",
                 "p_grounded", "p_multi_photo", "p_yes_no", "position_turns", "extra_turns", "image_max_side")
        return Recipe(max_qa_turns=self.max_qa_turns or 6, **{n: getattr(self, n) for n in names}).validate()


def _coerce(name: str, raw: str, current, where: str | None = None):
    """``raw`` (text) as the type of ``current``, the field's default."""
    typ = type(current)
    try:
        if typ is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if typ in (int, float, str):
            return typ(raw)
        return yaml.safe_load(raw)
    except ValueError:
        raise ConfigError(f"{where or '--set'} {name}={raw}: expected a value of type {typ.__name__}") from None


def _typed(name: str, value, current, where: str):
    """A YAML value checked against the field's type (ints are fine for floats; YAML reads ``1e-5``,
    without a dot, as text, so numeric text is converted)."""
    typ = type(current)
    # bool is an int subclass in Python: keep true/false and numbers apart
    if typ is not str and not isinstance(value, str) and isinstance(value, bool) != (typ is bool):
        raise ConfigError(f"{where}: {name} must be of type {typ.__name__}, got {value!r}")
    if typ is float and isinstance(value, int):
        return float(value)
    if isinstance(value, typ):
        return value
    if isinstance(value, str) and typ in (int, float, bool):
        return _coerce(name, value, current, where)
    raise ConfigError(f"{where}: {name} must be of type {typ.__name__}, got {type(value).__name__} {value!r}")


def _unknown(keys, known) -> str:
    hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, n=1)) else repr(k)
             for k in keys]
    return ", ".join(hints)


def load_config(path: str | Path | None = None, overrides: list[str] = (), cls=TrainConfig):
    """Load a YAML config (optional) into ``cls`` (a config dataclass, TrainConfig by default) and apply
    ``key=value`` overrides; unknown keys are errors."""
    known = {f.name for f in fields(cls)}
    values: dict = {}
    if path:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        try:
            values = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p} is not valid YAML: {e}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{p}: expected a mapping of config keys, got a {type(values).__name__}")
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{p}: unknown config key(s) {_unknown(unknown, known)}; known keys: {sorted(known)}")
    defaults = cls()
    values = {k: _typed(k, v, getattr(defaults, k), str(path)) for k, v in values.items()}
    cfg = cls(**values)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        if key not in known:
            raise ConfigError(f"--set {key}: unknown config key {_unknown([key], known)}; known keys: {sorted(known)}")
        current = getattr(cfg, key)
        setattr(cfg, key, _typed(key, _coerce(key, raw, current), current, "--set"))
    return cfg


def to_dict(cfg) -> dict:
    """Any config dataclass (TrainConfig, VisionPretrainConfig) as a plain dict."""
    return dataclasses.asdict(cfg)
