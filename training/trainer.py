"""The CAFe trainer: one linear loop (nanoGPT style) with DDP/FSDP, accumulation, checkpoints and resume.

Run: ``python -m training train --config training/configs/tiny-cpu.yaml [--set key=value ...]``, or
``torchrun --nproc_per_node N -m training train ...`` for several processes (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml

from cafe_core.family import family_for
from cafe_core.forward import collate, naive_forward, shared_forward, tree_forward
from cafe_core.inputs import IGNORE_INDEX, PromptEncoder
from cafe_core.loading import load_model_and_processor, resolve_device
from cafe_core.losses import CafeLoss
from cafe_core.vocab import WordCounts
from data.errors import DataFormatError

from . import parallel
from .checkpoint import latest_checkpoint, publish_folder, rng_state, save_checkpoint, set_rng_state, truncate_metrics
from .schedule import lr_factor
from .token_position import HEAD_LR_FACTOR, ProjectorInputs, TokenPositionHead, grid_side
from .seqlen import SequenceBudget
from .config import ConfigError, TrainConfig
from .modes import apply_mode, make_optimizer, param_groups, prepare_quantized, preflight

log = logging.getLogger("training")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf; the run stopped and the last good checkpoint was kept."""


class TrainStep(nn.Module):
    """Wraps the model so DDP/FSDP see one forward per micro-step (their hooks need it)."""

    def __init__(self, model, encoder: PromptEncoder, forward: str, need_lm: bool, need_embeddings: bool,
                 position_head: nn.Module | None = None, position_projector: nn.Module | None = None):
        super().__init__()
        self.model, self.encoder = model, encoder
        self.forward_kind, self.need_lm, self.need_embeddings = forward, need_lm, need_embeddings
        self.position_head = position_head  # training/token_position.py (shared forward only)
        # set (token_position_reach: projector): the head reads the projector re-applied to its detached input
        self.projector_inputs = ProjectorInputs(position_projector) if position_projector is not None else None

    def _forward(self, batch):
        if self.forward_kind == "naive":
            return naive_forward(self.model, batch, self.encoder, self.need_lm, self.need_embeddings)
        if self.forward_kind == "tree":
            return tree_forward(self.model, batch, self.encoder, self.need_lm, self.need_embeddings)
        return shared_forward(self.model, batch, self.need_lm, self.need_embeddings)

    def forward(self, batch):
        position = None
        if self.position_head is not None and self.projector_inputs is not None:
            with self.projector_inputs as recorded:
                out = self._forward(batch)
            if out.image_tokens:
                position = self.position_head(recorded.detached_tokens(out.image_tokens))
        else:
            out = self._forward(batch)
            if self.position_head is not None and out.image_tokens:
                position = self.position_head(out.image_tokens)
        return out.lm_loss, out.image_emb, out.text_emb, out.hard_text_emb, position


# ---------------------------------------------------------------------- setup helpers
def setup_distributed(device_pref: str) -> tuple[int, int, torch.device]:
    """Init the process group under torchrun; returns (rank, world_size, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "fp32" or (cfg.precision == "auto" and device.type != "cuda"):
        return None
    if cfg.precision in ("bf16", "auto"):
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16 if cfg.precision == "auto" else None
        return torch.bfloat16
    return torch.float16


class Prefetcher:
    """Loads and collates the next batches in a background thread, in a fixed order (exact resume)."""

    def __init__(self, make_batches, depth: int = 2):
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._run, args=(make_batches,), daemon=True)
        self.thread.start()

    def _run(self, make_batches):
        try:
            for item in make_batches():
                self.q.put(("ok", item))
            self.q.put(("end", None))
        except BaseException as e:  # re-raised in the training thread
            self.q.put(("error", e))

    def __iter__(self):
        while True:
            kind, item = self.q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item


# ---------------------------------------------------------------------- the run
class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.cfg = cfg.validate()
        self.resume = resume
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.rank, self.world, self.device = setup_distributed(cfg.device)
        self.is_main = self.rank == 0
        self.out = Path(cfg.out_dir)
        self.ckpt_root = self.out / "checkpoints"
        preflight(cfg, self.device, self.world)  # before any data or model work

        from data.dataset import open_dataset

        self.dataset = open_dataset(cfg.data, max_side=cfg.image_max_side)  # clear error when missing/empty
        if len(self.dataset) < cfg.batch_size * self.world:
            raise ConfigError(f"{cfg.data} has {len(self.dataset)} samples, fewer than one batch "
                              f"(batch_size {cfg.batch_size} x {self.world} process(es))")
        self.augment = None
        if cfg.augment == "sampleworld":
            from .sampleworld import SampleWorldAugment

            self.augment = SampleWorldAugment(cfg.data, cfg.seed, cfg.recipe())

        self.state = {"step": 0, "epoch": 0, "consumed": 0}  # consumed: samples of this epoch, all ranks
        # Words of every text trained on, this rank's since the start or the resumed checkpoint (which
        # holds every rank's words so far, restored on rank 0); see cafe_core.vocab.
        self.vocab = WordCounts()
        start = latest_checkpoint(self.ckpt_root) if resume else None
        self._seed_everything(cfg.seed + self.rank)
        model_source = cfg.base_model
        if start is not None and cfg.mode == "full":
            model_source = str(start / "model")
        quant = "4bit" if cfg.mode == "qlora" else None
        model, self.processor = load_model_and_processor(model_source, self.device, "float32", quant,
                                                         projector_full_precision=True)
        self.family = family_for(model.config)
        if start is not None and cfg.mode != "full":
            from peft import PeftModel

            if cfg.mode == "qlora":
                model = prepare_quantized(model, cfg)
            self.model = PeftModel.from_pretrained(model, str(start / "model"), is_trainable=True)
        else:
            self.model = apply_mode(model, cfg, self.family)
        self.model.train()
        if cfg.grad_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.encoder = PromptEncoder(self.processor, self.family)
        self.budget = SequenceBudget(self.encoder, cfg.max_seq_len) if cfg.max_seq_len > 0 else None
        self.loss_fn = CafeLoss(cfg.loss, cfg.con_weight, cfg.lm_weight, rank=self.rank, world_size=self.world,
                                gather_with_grad=cfg.gather_with_grad, hard_negatives=cfg.p_hard > 0,
                                position_weight=cfg.token_position_weight)
        self.position_head = position_projector = None
        if cfg.token_position_weight > 0:  # throw-away head, trained with the model, never exported
            self.position_head = TokenPositionHead(model.config.text_config.hidden_size, grid_side(model)).to(self.device)
            if cfg.token_position_reach == "projector":
                position_projector = self.family.projector(self.model)
        self.step_module = parallel.wrap(
            TrainStep(self.model, self.encoder, cfg.forward, self.loss_fn.needs_lm, self.loss_fn.needs_embeddings,
                      self.position_head, position_projector),
            cfg.distributed, self.world, self.device, getattr(self.model, "_no_split_modules", None))
        self.fsdp = parallel.is_fsdp(self.step_module)
        groups = param_groups(self.model, cfg, self.family)
        if self.position_head is not None:
            groups.append({"params": list(self.position_head.parameters()), "lr": HEAD_LR_FACTOR * cfg.lr,
                           "weight_decay": 0.0, "name": "position_head"})
        self.optimizer = make_optimizer(groups, cfg)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        per_step = cfg.batch_size * cfg.grad_accum * self.world
        self.total_steps = cfg.max_steps or max(1, int(cfg.epochs * len(self.dataset) // per_step))
        self.end_step = min(self.total_steps, cfg.stop_at) if cfg.stop_at > 0 else self.total_steps
        self.amp_dtype = autocast_dtype(cfg, self.device)
        if start is not None:
            self._load_state(start)
        self._t_last, self._samples_since = time.perf_counter(), 0  # samples/s since the last logged step

    # -- setup
    @staticmethod
    def _seed_everything(seed: int):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    # -- state
    def _load_state(self, ckpt: Path):
        st = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=False)
        parallel.load_optimizer_state(self.step_module, self.optimizer, st["optimizer"], self.rank)
        self.state = st["position"]
        if self.position_head is not None and "position_head" in st:
            self.position_head.load_state_dict(st["position_head"])
        rngs = st["rng"]
        set_rng_state(rngs[self.rank] if isinstance(rngs, list) and len(rngs) > self.rank else rngs)
        if self.is_main and "vocab" in st:
            self.vocab = WordCounts.from_json(st["vocab"])
        if self.is_main:
            log.info("resumed from %s at step %d", ckpt, self.state["step"])

    def _save(self, step: int) -> Path | None:
        if not self._weights_finite():  # never let a checkpoint replace the last good one with NaNs
            raise NonFiniteLoss(self._nan_message(step - 1, what="weights"))
        rngs, vocab = [rng_state()], self.vocab
        if self.world > 1:  # every rank's RNG, so a resumed rank continues its own stream; all words
            gathered = [None] * self.world
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
            counts = [None] * self.world
            dist.all_gather_object(counts, self.vocab.to_json())
            vocab = WordCounts()
            for c in counts:
                vocab = vocab.merge(WordCounts.from_json(c))
        # FSDP: gathering the full weights and optimizer state is a collective, so every rank joins.
        weights = _strip_prefix(parallel.full_state_dict(self.step_module), "model.") if self.fsdp else None
        optim = parallel.optimizer_state(self.step_module, self.optimizer) if (self.fsdp or self.is_main) else None
        if not self.is_main:
            return None
        state = {"optimizer": optim, "position": dict(self.state), "rng": rngs, "config": asdict(self.cfg),
                 "vocab": vocab.to_json()}
        if self.position_head is not None:
            state["position_head"] = self.position_head.state_dict()

        def save_model(folder: Path):
            self.model.save_pretrained(folder, state_dict=weights)
            self.processor.save_pretrained(folder)

        return save_checkpoint(self.ckpt_root, step, save_model, state, self.cfg.keep_checkpoints)

    # -- data
    def _batches(self):
        """Yield collated batches forever, epoch after epoch, from the saved data position."""
        samples = sample_batches(self.dataset, self.augment, self.cfg.batch_size, self.cfg.seed, self.world,
                                 self.rank, self.state["epoch"], self.state["consumed"], self.budget)
        for chunk, position in samples:
            yield collate(self.encoder, chunk, self.loss_fn.needs_embeddings), position, batch_texts(chunk)

    # -- loop
    def _all_finite(self, t: torch.Tensor) -> bool:
        ok = torch.tensor([1.0 if bool(torch.isfinite(parallel.local(t)).all()) else 0.0], device=self.device)
        if self.world > 1:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item() == 1.0)

    def _weights_finite(self) -> bool:
        ok = all(bool(torch.isfinite(parallel.local(p)).all()) for p in self.model.parameters() if p.requires_grad)
        return self._all_finite(torch.tensor(1.0 if ok else float("nan")))

    def _supervised_tokens(self, batches) -> tuple[list[int], int]:
        """Per micro-batch counts of LM-supervised tokens, and their total over the step on all ranks."""
        counts = [int((b.conv["labels"][:, 1:] != IGNORE_INDEX).sum()) for b, _, _ in batches]
        total = torch.tensor([float(sum(counts))], device=self.device)
        if self.world > 1:
            dist.all_reduce(total)
        return counts, max(1, int(total.item()))

    def _log(self, record: dict):
        if not self.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def train(self) -> Path:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            (self.out / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
        if self.is_main:
            truncate_metrics(self.out / "metrics.jsonl", self.state["step"])
        batches = self.batches()
        from tqdm import tqdm

        bar = tqdm(total=self.end_step, initial=self.state["step"], desc="train", unit="step",
                   disable=not self.is_main, dynamic_ncols=True)
        self._t_last, self._samples_since = time.perf_counter(), 0
        while self.state["step"] < self.end_step:
            step = self.state["step"]
            record = self.step([next(batches) for _ in range(cfg.grad_accum)])
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}", sps=f"{record['samples_per_s']:.1f}")
            bar.update(1)
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < self.end_step:
                self._save(step + 1)
        bar.close()
        last = self._save(self.end_step)
        final = self._export_final(last) if self.is_main else None
        if self.world > 1:
            dist.barrier()
        return final

    def batches(self):
        """The collated batches of the run from its saved data position, loaded ahead in a background
        thread: items of ``(TrainBatch, (epoch, consumed), texts)`` for :meth:`step`."""
        return iter(Prefetcher(self._batches))

    def step(self, micro_batches: list) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches (items of :meth:`batches`): forward,
        backward, clipping, AdamW; advances the state and returns the metrics record (also logged)."""
        cfg = self.cfg
        step = self.state["step"]
        factor = lr_factor(step, self.total_steps, cfg.warmup_ratio, cfg.min_lr_ratio, cfg.schedule)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * factor
        tokens, step_tokens = self._supervised_tokens(micro_batches)
        local_tokens = max(1, sum(tokens))
        sums = {"loss": 0.0, "lm_loss": 0.0, "con_loss": 0.0, "position_loss": 0.0}
        for micro, (batch, position, texts) in enumerate(micro_batches):
            batch.to(self.device, None)
            self.vocab.update(texts)
            with parallel.grad_sync(self.step_module, sync=micro == cfg.grad_accum - 1):
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    lm, img, txt, hard, pos = self.step_module(batch)
                # L_lm is a mean over supervised tokens: weight each micro-batch by its share of the
                # step's tokens (all micro-batches, all ranks; x world because DDP/FSDP average
                # gradients over ranks), so batch 4 x accum 2 gives the update of batch 8 x accum 1.
                # L_con is a mean over micro-batches: accumulation does not add negatives (by design).
                out = self.loss_fn(image_emb=img, text_emb=txt, text_tags=batch.text_tags,
                                   image_tags=batch.image_tags, lm_value=lm, hard_text_emb=hard,
                                   hard_tags=batch.hard_tags, lm_scale=tokens[micro] * self.world / step_tokens,
                                   con_scale=1 / cfg.grad_accum, position_value=pos)
                if not self._all_finite(out.loss.detach()):
                    raise NonFiniteLoss(self._nan_message(step))
                if out.lm_loss is not None:
                    sums["lm_loss"] += out.lm_loss.item() * tokens[micro] / local_tokens
                if out.con_loss is not None:
                    sums["con_loss"] += out.con_loss.item() / cfg.grad_accum
                if out.position_loss is not None:
                    sums["position_loss"] += out.position_loss.item() / cfg.grad_accum
                out.loss.backward()
            self._samples_since += cfg.batch_size * self.world
        sums["loss"] = self.loss_fn.combine(sums["lm_loss"], sums["con_loss"],
                                            position_value=sums["position_loss"] if self.position_head is not None else None)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if not self._all_finite(gnorm.detach()):
            raise NonFiniteLoss(self._nan_message(step, what="gradient norm"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state = {"step": step + 1, "epoch": position[0], "consumed": position[1]}
        now = time.perf_counter()
        rate = self._samples_since / max(1e-9, now - self._t_last)
        record = {"step": step + 1, "epoch": position[0], **sums, "lr": self.optimizer.param_groups[0]["lr"],
                  "grad_norm": float(parallel.local(gnorm)), "samples_per_s": rate}
        if self.loss_fn.mode == "lm":
            record.pop("con_loss")
        if self.loss_fn.mode == "contrastive":
            record.pop("lm_loss")
        if self.position_head is None:
            record.pop("position_loss")
        if self.budget is not None:
            record.update(self.budget.counts())
        self._log(record)
        if (step + 1) % cfg.log_every == 0 or step == 0:
            self._t_last, self._samples_since = now, 0
        return record

    def _nan_message(self, step: int, what: str = "loss") -> str:
        last = latest_checkpoint(self.ckpt_root)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
        return (f"the {what} became NaN/inf at step {step + 1}; stopping ({kept}). "
                "Lower the learning rate, enable gradient clipping, or use fp32/bf16 instead of fp16.")

    def _export_model(self, checkpoint: Path):
        """The model to write as the final folder. In memory for a plain or LoRA model; rebuilt on CPU
        from the final checkpoint when the weights are sharded (FSDP) or 4-bit (QLoRA: the adapters are
        merged into the full-precision base, not into its nf4 approximation, as peft recommends)."""
        cfg = self.cfg
        if not self.fsdp and cfg.mode != "qlora":
            model = self.model
            return model.merge_and_unload() if cfg.mode != "full" and cfg.merge_lora else model
        if cfg.mode == "full":
            return load_model_and_processor(checkpoint / "model", "cpu", cfg.save_dtype)[0]
        from peft import PeftModel

        base = load_model_and_processor(cfg.base_model, "cpu", cfg.save_dtype)[0]
        model = PeftModel.from_pretrained(base, str(checkpoint / "model"))
        return model.merge_and_unload() if cfg.merge_lora else model

    def _export_final(self, checkpoint: Path) -> Path:
        """Write ``out_dir/final``: a standard Hugging Face folder (LoRA merged on request), the words it
        trained on (cafe_core.vocab, added to the base model's), curves, eval and a model card."""
        from .card import write_model_card
        from .plots import plot_training_curves

        model = self._export_model(checkpoint)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.cfg.save_dtype]
        vocab = torch.load(checkpoint / "trainer_state.pt", map_location="cpu", weights_only=False).get("vocab")
        vocab = WordCounts.from_json(vocab) if vocab else self.vocab
        base_vocab = WordCounts.load(self.cfg.base_model) if Path(self.cfg.base_model).is_dir() else None

        def write(folder: Path):
            nonlocal model
            if dtype != torch.float32:
                model = model.to(dtype)
            model.save_pretrained(folder)
            self.processor.save_pretrained(folder)
            if dtype != torch.float32:
                model.to(torch.float32)
            (base_vocab.merge(vocab) if base_vocab else vocab).save(folder)
            metrics_path = self.out / "metrics.jsonl"
            if metrics_path.exists():
                plot_training_curves(metrics_path, folder / "training_curves.png")
            eval_metrics = None
            adapter_only = self.cfg.mode != "full" and not self.cfg.merge_lora
            if self.cfg.eval_data and adapter_only:
                log.warning("eval_data skipped: the final folder holds LoRA adapters only (merge_lora: false)")
            elif self.cfg.eval_data:
                eval_metrics = self._final_eval(folder)
            write_model_card(folder, self.cfg, self.end_step, eval_metrics)

        final = publish_folder(self.out / "final", write)
        log.info("final model written to %s", final)
        return final

    def _final_eval(self, folder: Path) -> dict:
        from cafe_core import CafeModel

        from .evaluate import EvalConfig, evaluate

        model = CafeModel.load(folder, device=str(self.device), dtype="float32")
        cfg = EvalConfig(out_dir=folder / "eval", max_questions=self.cfg.eval_max_questions,
                         max_photos=self.cfg.eval_max_photos, progress=False)
        metrics = evaluate(model, self.cfg.eval_data, cfg)
        (folder / "eval.json").write_text(json.dumps(metrics, indent=2))
        return metrics


def sample_batches(dataset, augment, batch_size: int, seed: int, world: int = 1, rank: int = 0, epoch: int = 0,
                   consumed: int = 0, budget: SequenceBudget | None = None):
    """This rank's batches of augmented samples, forever, in the trainer's order: ``(samples, (epoch,
    consumed))`` per batch, ``consumed`` counting every rank's samples of the epoch so far. The order depends
    only on (data, seed, world, augment), so a resumed run, and a replay without a model
    (training/replay_vocab.py), see the same samples."""
    per_batch = batch_size * world
    while True:
        # Every rank takes the same number of full batches per epoch (the ranks step together);
        # the tail that cannot fill a batch on every rank is dropped.
        n_batches = (len(dataset) - consumed) // per_batch
        ds = dataset.shuffle(seed).set_epoch(epoch).skip(consumed)
        if world > 1:
            ds = ds.shard(rank, world)
        chunk, produced = [], 0
        for sample in ds:
            if produced == n_batches:
                break
            if augment is not None:
                sample = augment(sample, epoch)
            if budget is not None and (sample := budget.fit(sample)) is None:
                continue  # its first exchange alone is over max_seq_len (counted, logged)
            chunk.append(sample)
            if len(chunk) == batch_size:
                consumed += per_batch
                produced += 1
                yield chunk, (epoch, consumed)
                chunk = []
        if produced == 0 and n_batches > 0:  # unusable images everywhere: never spin on empty epochs
            too_long = f" ({budget.skipped} over max_seq_len {budget.max_len})" if budget else ""
            raise DataFormatError(dataset.path, f"epoch {epoch} gave no full batch of {batch_size} usable samples"
                                  + too_long)
        epoch, consumed = epoch + 1, 0


def batch_texts(samples) -> list[str]:
    """Every text of a batch's samples (conversation turns, contrastive and hard negative texts)."""
    out = []
    for s in samples:
        out += [t.content for t in s.conversation]
        out += [t for t in (s.caption, getattr(s, "hard_caption", None)) if t]
    return out


def _strip_prefix(state: dict, prefix: str) -> dict:
    """``TrainStep`` keys (``model.<name>``) -> the model's own keys."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def train(cfg: TrainConfig, resume: bool = False) -> Path | None:
    """Run a training job; returns the final folder on rank 0."""
    try:
        return Trainer(cfg, resume=resume).train()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
