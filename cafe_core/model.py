"""CafeModel: one image-text-to-text model that embeds (retrieval) and generates (answers)."""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from . import prompts
from .crops import base_view_inputs, changes_vectors, resolve_crops
from .errors import InputError
from .family import family_for, multimodal_base
from .inputs import PromptEncoder, check_images, check_texts
from .loading import load_model_and_processor
from .pooling import pool_last_token
from .prefix import ImagePrefixes

_FINGERPRINT_SAMPLES = 4096  # values hashed per tensor: enough to tell fine-tunes apart, cheap for 7B


def weights_digest(model: torch.nn.Module) -> str:
    """A stable digest of a model's weights from a strided sample of every tensor (dtype-robust via bf16)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // _FINGERPRINT_SAMPLES)
        sample = flat[::step][:_FINGERPRINT_SAMPLES].to("cpu", torch.float32).to(torch.bfloat16)
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(sample.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def language_hidden_size(config) -> int:
    """Embedding dimension = the language model's hidden size."""
    text = getattr(config, "text_config", None) or config
    return int(text.hidden_size)


class _TokenQueue:
    """A transformers streamer that hands new token ids to another thread (skips the prompt)."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor):
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self):
        self.queue.put(None)


class _StopWhenSet:
    """A generation stopping criterion: stop once ``event`` is set (the stream's consumer went away)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class CafeModel:
    """Embed images, texts and image+text queries, and generate answers, with one loaded model.

    Embeddings follow the CAFe recipe: chat-formatted "compress in one word" prompts from
    :mod:`cafe_core.prompts`, last-layer post-norm hidden state of the last real token, L2-normalised.
    """

    def __init__(self, model, processor, name: str = "<in-memory>", batch_size: int = 8, image_crops: str = "native"):
        self.model = model.eval()
        self.processor = processor
        self.family = family_for(model.config)
        self.encoder = PromptEncoder(processor, self.family)
        self.chat = self.encoder.chat
        self.tokenizer = self.encoder.tokenizer
        self.name = name
        self.batch_size = batch_size
        self.dim = language_hidden_size(model.config)
        self.image_crops = resolve_crops(image_crops, self.device)  # how many views of a photo embeddings read
        self._fingerprint: str | None = None
        self._prefixes: ImagePrefixes | None = None  # set inside sharing_image_prefixes()

    @classmethod
    def load(
        cls,
        name_or_path: str | Path,
        device: str | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        quantization: str | None = None,
        batch_size: int = 8,
        image_crops: str = "native",
    ) -> "CafeModel":
        """Load a hub id, a local folder or ``tiny:<preset>``; see :func:`cafe_core.loading.load_model_and_processor`.
        ``image_crops``: how many views of a photo embeddings read (cafe_core.crops; "auto": cheapest on CPU)."""
        model, processor = load_model_and_processor(name_or_path, device, dtype, quantization)
        return cls(model, processor, name=str(name_or_path), batch_size=batch_size, image_crops=image_crops)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        for p in self.model.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    @property
    def fingerprint(self) -> str:
        """Short stable id of (weights, embedding prompt version, embedding dim, image crops): vectors with
        equal fingerprints are comparable. The crop setting enters only when it changes the vectors."""
        if self._fingerprint is None:
            key = f"{prompts.PROMPT_VERSION}|{self.dim}|{weights_digest(self.model)}"
            if changes_vectors(self.model.config, self.image_crops):
                key += f"|crops={self.image_crops}"
            self._fingerprint = "cafe-" + hashlib.sha256(key.encode()).hexdigest()[:16]
        return self._fingerprint

    # ------------------------------------------------------------------ embedding
    def embedding_batch(self, texts: list[str], images: list[Image.Image] | None):
        """(model inputs, mm_encoder_outputs or None) of embedding prompts, with this model's crop setting."""
        if images and self.image_crops == "base":
            return base_view_inputs(self.model, self.encoder, texts, images, self.device, self.dtype)
        return self.encoder.encode(texts, images or None, device=self.device, dtype=self.dtype), None

    @torch.inference_mode()
    def embed_batch(self, batch, mm=None) -> torch.Tensor:
        """(B, dim) L2-normalised float32 embeddings of one ``embedding_batch``: the post-norm last hidden
        state (no lm_head, also through peft) at the pooled token."""
        base = multimodal_base(self.model)
        hidden = base(**batch, mm_encoder_outputs=mm).last_hidden_state if mm else base(**batch).last_hidden_state
        return pool_last_token(hidden, batch["attention_mask"])

    def _embed_prompts(self, texts: list[str], images: list[Image.Image] | None, batch_size, progress, desc):
        bs = batch_size or self.batch_size
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        steps = range(0, len(texts), bs)
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc=desc, unit="batch")
        for i in steps:
            batch, mm = self.embedding_batch(texts[i : i + bs], images[i : i + bs] if images else None)
            out[i : i + bs] = self.embed_batch(batch, mm).cpu().numpy()
        return out

    def embed_images(self, images: Sequence[Image.Image], batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """(N, dim) float32 L2-normalised embeddings of upright RGB images."""
        images = check_images(images)
        if not images:
            raise InputError("embed_images needs at least one image")
        texts = [prompts.image_embedding_prompt(self.chat)] * len(images)
        return self._embed_prompts(texts, images, batch_size, progress, "embedding images")

    def embed_texts(self, texts: Sequence[str], batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """(N, dim) float32 L2-normalised embeddings of texts (queries or captions)."""
        texts = [prompts.text_embedding_prompt(t, self.chat) for t in check_texts(texts)]
        return self._embed_prompts(texts, None, batch_size, progress, "embedding texts")

    def embed_multimodal(
        self, images: Sequence[Image.Image], texts: Sequence[str], batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        """(N, dim) embeddings of composed queries: image i with text i (e.g. "this photo but at night")."""
        images, texts = check_images(images), list(texts)
        if not images:
            raise InputError("embed_multimodal needs at least one (image, text) pair")
        if len(images) != len(texts):
            raise InputError(f"embed_multimodal got {len(images)} images but {len(texts)} texts")
        prompts_ = [prompts.multimodal_embedding_prompt(t, self.chat) for t in texts]
        return self._embed_prompts(prompts_, images, batch_size, progress, "embedding image+text")

    # ------------------------------------------------------------------ scoring
    def reply_logprob(
        self, question: str, reply: str, images: Sequence[Image.Image], batch_size: int | None = None
    ) -> list[float]:
        """log P(reply | question about image i), summed over the reply's tokens, for each image.

        The same text scored against several photos says which photo the model finds it most likely
        about: the app re-ranks retrieved photos by how well each one explains a question
        (``reply_logprob(prompts.DESCRIBE_INSTRUCTION, question, photos)``).
        """
        if not isinstance(reply, str) or not reply.strip():
            raise InputError("the reply to score is empty")
        images = check_images(images)
        if not images:
            raise InputError("reply_logprob needs at least one image")
        return self._replies_logprob([question] * len(images), [reply] * len(images), images, batch_size)

    @contextlib.contextmanager
    def sharing_image_prefixes(self):
        """Inside the block, scoring calls (reply_logprob, choice_probabilities) about the same image object
        run its prompt beginning once for all of them (cafe_core.prefix); the cache is dropped on exit."""
        outer = self._prefixes
        self._prefixes = outer or ImagePrefixes(multimodal_base(self.model), self.encoder, self.device, self.dtype)
        try:
            yield self
        finally:
            self._prefixes = outer

    def _tail_states(self, texts: list[str], images: list, tails: list[int], batch_size: int | None):
        """Per row r (prompt r about image r): the last hidden states at its last tails[r] + 1 positions and
        its last tails[r] token ids, so hidden[j] predicts ids[j] and hidden[-1] the token after the prompt.

        Rows about the same image object (several questions about one photo), and every row inside
        sharing_image_prefixes(), run the image's prompt beginning once (cafe_core.prefix); the others run
        whole, in batches.
        """
        bs = batch_size or self.batch_size
        out: list = [None] * len(texts)
        base = multimodal_base(self.model)
        prefixes = self._prefixes or ImagePrefixes(base, self.encoder, self.device, self.dtype)
        by_image: dict[int, list[int]] = {}
        for r, image in enumerate(images):
            by_image.setdefault(id(image), []).append(r)
        whole: list[int] = []
        for rows in by_image.values():
            shared = None
            if len(rows) > 1 or self._prefixes is not None:
                shared = prefixes.tail_states([texts[r] for r in rows], images[rows[0]], [tails[r] for r in rows], bs)
            if shared is None:
                whole += rows
            for r, states in zip(rows, shared or ()):
                out[r] = states
        whole.sort()
        for i in range(0, len(whole), bs):
            rows = whole[i : i + bs]
            batch = self.encoder.encode([texts[r] for r in rows], [images[r] for r in rows], device=self.device,
                                        dtype=self.dtype)
            hidden = base(**batch).last_hidden_state  # post-norm: what lm_head reads
            ends = batch["attention_mask"].sum(dim=1).tolist()  # right padding: real tokens are [0, end)
            for j, (r, end) in enumerate(zip(rows, ends)):
                # Copies, so that the batch's full hidden states are freed with the batch.
                out[r] = (hidden[j, end - tails[r] - 1 : end].clone(), batch["input_ids"][j, end - tails[r] : end])
        return out

    @torch.inference_mode()
    def _replies_logprob(self, questions: list[str], replies: list[str], images: list, batch_size: int | None) -> list[float]:
        """log P(reply r | question r about image r), summed over reply r's tokens, for each row r."""
        texts, n_reply = [], []
        for question, reply in zip(questions, replies):
            prompt = prompts.generation_prompt(question, 1, chat=self.chat)
            head = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            full = self.tokenizer(prompt + reply, add_special_tokens=False)["input_ids"]
            if full[: len(head)] != head:  # a token spanning the prompt/reply boundary: cannot split the score
                raise InputError("the reply merges with the prompt's last token; start it with a word")
            texts.append(prompt + reply)
            n_reply.append(len(full) - len(head))
        lm_head = self.model.get_output_embeddings()
        out: list[float] = []
        for hidden, targets in self._tail_states(texts, images, n_reply, batch_size):
            # Only the positions that predict the reply go through lm_head: full-sequence logits of a real
            # checkpoint (152k vocabulary, thousands of image tokens) would not fit in memory.
            logits = lm_head(hidden[:-1]).float()
            out.append(float(torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).sum()))
        return out

    @torch.inference_mode()
    def choice_probabilities(
        self, questions: Sequence[str], images: Sequence[Image.Image], choices: Sequence[str] = ("yes", "no"),
        batch_size: int | None = None,
    ) -> np.ndarray:
        """(N, C): P(choice c | question i about image i), renormalised over the choices.

        When the choices start with different tokens, read from the next-token distribution right after
        the generation prompt (one forward pass per pair, no generation); otherwise each choice's whole
        reply is scored (one pass per pair and choice). The app asks the generator "Is there a purple star
        in the photo?" this way before it cites a photo.
        """
        questions, images = list(questions), check_images(images)
        if len(questions) != len(images) or not questions:
            raise InputError(f"choice_probabilities needs one image per question (got {len(questions)} and {len(images)})")
        # What the chat format writes between the generation prompt and an answer (SmolVLM: a space).
        lead = self.chat.header("assistant", "x")[len(self.chat.generation_header):]
        first = [self.tokenizer(lead + c, add_special_tokens=False)["input_ids"][0] for c in choices]
        if len(set(first)) == len(first):
            return self._first_token_probabilities(questions, images, first, batch_size)
        return self._whole_reply_probabilities(questions, images, [lead + c for c in choices], batch_size)

    def _first_token_probabilities(self, questions, images, first: list[int], batch_size) -> np.ndarray:
        """Softmax over the choices' first tokens of the next-token logits after the generation prompt."""
        texts = [prompts.generation_prompt(q, 1, chat=self.chat) for q in questions]
        states = self._tail_states(texts, images, [0] * len(texts), batch_size)
        logits = self.model.get_output_embeddings()(torch.stack([hidden[-1] for hidden, _ in states])).float()
        return torch.softmax(logits[:, first], dim=-1).cpu().numpy()

    def _whole_reply_probabilities(self, questions, images, replies: list[str], batch_size) -> np.ndarray:
        """Softmax over the choices of log P(the whole reply, closed by the end-of-turn token), so a choice
        that is the start of another ("star" / "stars") is not favoured for being shorter."""
        n = len(replies)
        logp = self._replies_logprob([q for q in questions for _ in replies],
                                     [r + self.chat.end for _ in questions for r in replies],
                                     [im for im in images for _ in replies], batch_size)
        logp = np.asarray(logp).reshape(len(questions), n)
        logp = logp - logp.max(axis=1, keepdims=True)
        return np.exp(logp) / np.exp(logp).sum(axis=1, keepdims=True)

    # ------------------------------------------------------------------ generation
    def _generation_inputs(self, question: str, images: Sequence[Image.Image], history: Sequence = ()):
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty")
        images = check_images(images)
        prompt = prompts.generation_prompt(question, len(images), history, chat=self.chat)
        return self.encoder.encode([prompt], images or None, device=self.device, dtype=self.dtype)

    def _generate_kwargs(self, max_new_tokens, do_sample, temperature, top_p, top_k) -> dict:
        kw = {
            "max_new_tokens": max_new_tokens,
            "do_sample": do_sample,
            "eos_token_id": self.encoder.end_id,
            "pad_token_id": self.encoder.pad_id,
        }
        if do_sample:
            kw.update(temperature=temperature, top_p=top_p, top_k=top_k)
        else:  # silence sampling-only defaults some checkpoints ship in generation_config
            kw.update(temperature=None, top_p=None, top_k=None)
        return kw

    @torch.inference_mode()
    def generate(
        self,
        question: str,
        images: Sequence[Image.Image] = (),
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 50,
        history: Sequence = (),
    ) -> str:
        """Answer ``question`` about zero, one or several images (greedy by default)."""
        inputs = self._generation_inputs(question, images, history)
        out = self.model.generate(**inputs, **self._generate_kwargs(max_new_tokens, do_sample, temperature, top_p, top_k))
        new_tokens = out[0, inputs["input_ids"].shape[1]:]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True)

    def stream(
        self,
        question: str,
        images: Sequence[Image.Image] = (),
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 50,
        history: Sequence = (),
    ) -> Iterator[str]:
        """Yield the answer in pieces as tokens are generated; ``"".join`` equals :meth:`generate`'s output."""
        inputs = self._generation_inputs(question, images, history)
        from transformers import StoppingCriteriaList

        streamer = _TokenQueue()
        errors: list[BaseException] = []
        abandoned = threading.Event()

        def run():
            try:
                with torch.inference_mode():
                    self.model.generate(
                        **inputs, streamer=streamer, stopping_criteria=StoppingCriteriaList([_StopWhenSet(abandoned)]),
                        **self._generate_kwargs(max_new_tokens, do_sample, temperature, top_p, top_k),
                    )
            except BaseException as e:  # surfaced in the consumer thread below
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        tokens: list[int] = []
        sent = ""
        try:
            while (piece := streamer.queue.get()) is not None:
                tokens.extend(piece)
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                # Hold back a trailing partial UTF-8 character until its bytes are complete.
                if text.endswith("\ufffd"):
                    continue
                if len(text) > len(sent) and text.startswith(sent):
                    yield text[len(sent):]
                    sent = text
        finally:  # a consumer that stops early (closed generator) also stops the generation thread
            abandoned.set()
        thread.join()
        if errors:
            raise errors[0]
        final = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if final != sent:
            # Decoding is not always prefix-stable; never emit a concatenation that differs from generate().
            if final.startswith(sent):
                yield final[len(sent):]
            else:
                raise RuntimeError("streamed text diverged from the final decode")  # not seen with byte-level BPE
