"""A fast-starting text encoder for the CLI: a model's text-embedding path saved as TorchScript.

A cold `python -m app search` spends most of its time importing transformers' model code (about 4 s of
7 on 2 CPU cores: `torch._dynamo`, `torch.distributed.tensor`, torchvision), not embedding the query.
A text query needs only the language model over the embedding prompt and its last token
(cafe_core.pooling), so after a model has been loaded once, its language model is traced with
`torch.jit.trace` and saved with the model's tokenizer; later text searches load that with torch and
the `tokenizers` library alone, without importing transformers.

It is a cache, never a second source of truth:
- It is written only after checking that it gives the model's own embeddings (cosine >= 1 - TOLERANCE
  for probe texts of several lengths and scripts, token ids identical); otherwise nothing is written
  and searches keep loading the model.
- It is found by a key over the model folder's files (names, sizes, modification times) and the
  requested device/dtype/crop settings, and it records the model's fingerprint, so the store opens the
  same collection the model would. Anything else (a hub id, tiny:<preset>, a GPU, a language model
  over TEXT_ENCODER_MAX_MB) uses the model.
- Writes go to a temporary folder renamed into place, so an interrupted write leaves nothing behind;
  a cache that fails to load is ignored (and the model is used).

Layout: $XDG_CACHE_HOME/cafe-photos/text-encoders/<key>/{encoder.pt, tokenizer.json, meta.json}.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the saved layout or the traced computation changes
# Largest language model (parameter bytes) worth a second copy on disk: the saving is ~4 s of imports,
# which matters for small models; a 0.5B model takes longer than that to load anyway.
TEXT_ENCODER_MAX_MB = 256
# Agreement the traced encoder must reach with the model before it is saved.
TOLERANCE = 1e-5
PROBE_TEXTS = ("a red circle", "x", "a small green triangle on the left and a big blue square on a white background",
               "Ünïcødé 写真 🙂 photo", "  spaces  around  ")
_SLOT = "\x00TEXT\x00"  # stands for the query inside the rendered embedding prompt
# Model folder files that define the text path (weights, config, tokenizer, chat template).
_KEY_SUFFIXES = (".safetensors", ".bin", ".json", ".jinja", ".model", ".txt")


def default_cache_dir() -> Path:
    """Where encoders are kept: app.config.default_cache_dir() / "text-encoders"."""
    from app.config import default_cache_dir as app_cache_dir

    return app_cache_dir() / "text-encoders"


def cache_key(model_name: str, device: str, dtype: str, image_crops: str) -> str | None:
    """Key of a local model folder's encoder under these load settings; None for anything else."""
    folder = Path(model_name).expanduser()
    if not folder.is_dir() or device not in ("auto", "cpu"):
        return None
    parts = [f"format={FORMAT}", str(folder.resolve()), device, dtype, image_crops]
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.endswith(_KEY_SUFFIXES):
            st = path.stat()
            parts.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


class TracedTextEncoder:
    """Text embeddings of a model from its traced language model: what PhotoIndex and app.search need
    of a CafeModel for text queries (name, fingerprint, dim, image_crops, embed_texts)."""

    def __init__(self, module, tokenizer, meta: dict):
        self.module = module
        self.tokenizer = tokenizer
        self.meta = meta
        self.name = meta["model"]
        self.fingerprint = meta["fingerprint"]
        self.dim = int(meta["dim"])
        self.image_crops = meta["image_crops"]

    @classmethod
    def open(cls, model_name: str, device: str, dtype: str, image_crops: str,
             cache_dir: Path | None = None) -> "TracedTextEncoder | None":
        """The saved encoder for this model and these settings, or None (none saved, or it fails to load)."""
        key = cache_key(model_name, device, dtype, image_crops)
        folder = (cache_dir or default_cache_dir()) / key if key else None
        if folder is None or not (folder / "meta.json").is_file():
            return None
        import torch

        if device == "auto" and torch.cuda.is_available():
            return None  # the model would go to the GPU
        try:
            from tokenizers import Tokenizer

            meta = json.loads((folder / "meta.json").read_text())
            if meta.get("format") != FORMAT:
                return None
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice: the pinned torch has it
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(folder / "encoder.pt"), map_location="cpu")
            return cls(module.eval(), Tokenizer.from_file(str(folder / "tokenizer.json")), meta)
        except Exception as e:  # a damaged or foreign cache: the model is the fallback, not an error
            log.warning("ignoring the saved text encoder in %s (%s); loading the model", folder, e)
            return None

    def token_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(self.meta["prefix"] + text + self.meta["suffix"]).ids

    def embed_texts(self, texts, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """(N, dim) float32 L2-normalised embeddings, as CafeModel.embed_texts (same empty-text error)."""
        import torch

        from cafe_core.inputs import check_texts

        texts = check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            with torch.inference_mode():
                out[i] = self.module(torch.tensor([self.token_ids(text)])).numpy()[0]
        return out

    def embed_images(self, *args, **kwargs):
        raise TypeError("a traced text encoder embeds texts only; load the model for image queries")


def save_text_encoder(model, model_name: str, device: str, dtype: str, image_crops: str,
                      cache_dir: Path | None = None) -> Path | None:
    """Trace and save a loaded CafeModel's text path for `TracedTextEncoder.open`; return its folder, or
    None when the model does not qualify (see module doc) or the traced encoder disagrees with it.
    Writing is atomic and idempotent; errors are logged, never raised (the cache is optional)."""
    key = cache_key(model_name, device, dtype, image_crops)
    if key is None or model.device.type != "cpu" or not hasattr(model.tokenizer, "backend_tokenizer"):
        return None
    root = cache_dir or default_cache_dir()
    folder = root / key
    if (folder / "meta.json").is_file():
        return folder
    language = model.family.language_model(model.model)
    megabytes = sum(p.numel() * p.element_size() for p in language.parameters()) / 2**20
    if megabytes > TEXT_ENCODER_MAX_MB:
        return None
    try:
        return _write(model, model_name, image_crops, language, root, folder)
    except Exception as e:  # an optional cache: a failure costs speed, never the command
        log.warning("could not save a fast text encoder for %s: %s", model_name, e)
        return None


def _last_token_module(language):
    """torch.nn.Module: ids (1, T) -> the L2-normalised last-layer state of the last token, i.e.
    cafe_core.pooling.pool_last_token for one unpadded sequence."""
    import torch

    class LastTokenEmbedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.language = language

        def forward(self, input_ids):
            hidden = self.language(input_ids=input_ids, use_cache=False).last_hidden_state
            return torch.nn.functional.normalize(hidden[:, -1].float(), dim=-1)

    return LastTokenEmbedding().eval()


def _write(model, model_name: str, image_crops: str, language, root: Path, folder: Path) -> Path | None:
    import torch
    from tokenizers import Tokenizer

    from cafe_core import prompts

    prefix, suffix = prompts.text_embedding_prompt(_SLOT, model.chat).split(_SLOT)
    tokenizer = Tokenizer.from_str(model.tokenizer.backend_tokenizer.to_str())
    meta = {"format": FORMAT, "model": model_name, "fingerprint": model.fingerprint, "dim": model.dim,
            "image_crops": model.image_crops, "prefix": prefix, "suffix": suffix, "torch": torch.__version__}
    module = _last_token_module(language)
    probe_ids = [tokenizer.encode(prefix + t + suffix).ids for t in PROBE_TEXTS]
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
        traced = torch.jit.trace(module, (torch.tensor([probe_ids[0]]),), check_trace=False)
    expected = model.embed_texts(list(PROBE_TEXTS))
    for text, ids, want in zip(PROBE_TEXTS, probe_ids, expected):
        if ids != model.tokenizer(prefix + text + suffix)["input_ids"]:
            log.info("no fast text encoder for %s: the tokenizers library splits %r differently", model_name, text)
            return None
        with torch.inference_mode():
            got = traced(torch.tensor([ids])).numpy()[0]
        if float(got @ want) < 1 - TOLERANCE:
            log.info("no fast text encoder for %s: the traced model disagrees on %r (cos %.6f)", model_name, text,
                     float(got @ want))
            return None
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        traced.save(str(tmp / "encoder.pt"))
        tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))  # written last: its presence marks a whole cache
        os.replace(tmp, folder)
    except OSError:
        if not (folder / "meta.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # left only when another process won the race
    return folder
