"""FLOPs of an image-text-to-text model, counted from its config: the floor the benchmarks divide by.

A multiply-add is 2 FLOPs. Counted: every matmul of the vision tower (patch embedding, attention
projections, MLP, bidirectional attention scores and mixing), the projector, and the language model
(attention projections, MLP, causal attention: query i reads i + 1 keys, as a causal kernel computes;
``causal=False`` counts the full square, as matmul-level counters do). Not counted: norms, activations,
softmax, rotary embeddings. SigLIP's attention-pooling head is counted when the config keeps it
(``vision_use_head``; the real LLaVA-OneVision checkpoints do not).
Training a full model = 3x forward (backward = 2x forward), the usual "model FLOPs" of MFU; LoRA skips
the frozen weights' gradients (see ``train_flops``). Recomputation by gradient checkpointing is not
model work and is not counted.

    shape = shape_from_config(model.config)
    embed_flops(shape, crops=2, prompt_tokens=1515)     # one photo through vision + projector + LM
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class VisionShape:
    hidden: int
    layers: int
    intermediate: int
    image_size: int
    patch_size: int
    channels: int = 3
    head: bool = False  # SigLIP's attention-pooling head (runs in the forward when the config keeps it)

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class TextShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @property
    def layer_params(self) -> int:
        """Weights of one decoder layer's matmuls: q, k, v, o and the gated MLP (gate, up, down)."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return h * q + 2 * h * kv + q * h + 3 * h * self.intermediate


@dataclass(frozen=True)
class ModelShape:
    vision: VisionShape
    text: TextShape
    projector: tuple[tuple[int, int], ...]  # (in, out) of each projector matmul, applied per position
    projector_positions: int  # positions per crop the projector runs on
    kind: str = ""


def shape_from_config(config) -> ModelShape:
    """The shape of a LLaVA, LLaVA-OneVision or Idefics3 (SmolVLM) config."""
    v, t = config.vision_config, config.text_config
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    text = TextShape(t.hidden_size, t.num_hidden_layers, t.num_attention_heads,
                     getattr(t, "num_key_value_heads", None) or t.num_attention_heads, head_dim, t.intermediate_size,
                     t.vocab_size)
    vision = VisionShape(v.hidden_size, v.num_hidden_layers, v.intermediate_size, v.image_size, v.patch_size,
                         getattr(v, "num_channels", 3), bool(getattr(v, "vision_use_head", False)))
    if config.model_type in ("idefics3", "smolvlm"):
        s2 = config.scale_factor ** 2
        return ModelShape(vision, text, ((v.hidden_size * s2, t.hidden_size),), vision.patches // s2, config.model_type)
    if config.model_type in ("llava", "llava_onevision", "llava_next"):
        layers = getattr(config, "vision_feature_layer", -1)
        width = v.hidden_size * (len(layers) if isinstance(layers, (list, tuple)) else 1)
        positions = vision.patches  # SigLIP has no class token; "default" selection drops none then
        return ModelShape(vision, text, ((width, t.hidden_size), (t.hidden_size, t.hidden_size)), positions,
                          config.model_type)
    raise ValueError(f"no FLOP model for model_type {config.model_type!r}")


def vision_flops(shape: ModelShape, crops: int) -> int:
    """The vision tower over ``crops`` crops (each ``image_size`` square)."""
    v = shape.vision
    n = v.patches
    patch_embed = 2 * n * (v.channels * v.patch_size**2) * v.hidden
    per_layer = 2 * n * (4 * v.hidden**2 + 2 * v.hidden * v.intermediate) + 4 * n * n * v.hidden
    # The pooling head: one probe query over the n patches (k, v projections of every patch), its MLP.
    head = 4 * n * v.hidden**2 + 4 * v.hidden**2 + 4 * n * v.hidden + 4 * v.hidden * v.intermediate if v.head else 0
    return crops * (patch_embed + v.layers * per_layer + head)


def projector_flops(shape: ModelShape, crops: int) -> int:
    return crops * shape.projector_positions * sum(2 * i * o for i, o in shape.projector)


def attention_pairs(length: int, causal: bool = True) -> int:
    """(query, key) pairs one attention layer scores over a sequence of ``length`` tokens."""
    return length * (length + 1) // 2 if causal else length * length


def lm_flops(text: TextShape, lengths: Sequence[int], head_positions: int = 0, causal: bool = True) -> int:
    """The language model over sequences of ``lengths`` real tokens (padding is not model work), plus the
    LM head on ``head_positions`` positions (0 for embeddings: the pooled state is read before lm_head)."""
    d_attn = text.heads * text.head_dim
    linear = 2 * text.layer_params * sum(lengths)
    attention = 4 * d_attn * sum(attention_pairs(n, causal) for n in lengths)
    return text.layers * (linear + attention) + 2 * text.hidden * text.vocab * head_positions


def embed_flops(shape: ModelShape, crops: int, prompt_tokens: int) -> int:
    """One photo embedded: vision over its crops, the projector, the LM over the prompt (no LM head)."""
    return vision_flops(shape, crops) + projector_flops(shape, crops) + lm_flops(shape.text, [prompt_tokens])


def decode_flops(text: TextShape, context: int, new_tokens: int) -> int:
    """Generating ``new_tokens`` after a prefilled ``context`` with a KV cache: each new token runs the
    layers once, reads every earlier position, and the LM head."""
    d_attn = text.heads * text.head_dim
    total = 0
    for i in range(new_tokens):
        seen = context + i + 1
        total += text.layers * (2 * text.layer_params + 4 * d_attn * seen) + 2 * text.hidden * text.vocab
    return total


def generate_flops(shape: ModelShape, crops: int, prompt_tokens: int, new_tokens: int) -> int:
    """Prefill (vision + projector + LM over the prompt, LM head on its last position) + decoding.
    The first new token comes from the prefill, so ``new_tokens - 1`` decode steps follow."""
    prefill = vision_flops(shape, crops) + projector_flops(shape, crops) + lm_flops(shape.text, [prompt_tokens], 1)
    return prefill + decode_flops(shape.text, prompt_tokens, max(0, new_tokens - 1))


def cafe_step_forward_flops(shape: ModelShape, crops: Sequence[int], conversation_lengths: Sequence[int],
                            supervised_tokens: int, image_prompt_lengths: Sequence[int],
                            text_prompt_lengths: Sequence[int]) -> dict:
    """Forward FLOPs of one CAFe shared-forward micro-batch by part: vision and projector once per image
    (``crops`` per image); the language model over the conversations with the LM head on the supervised
    positions only, the image-embedding prompts and the text-embedding prompts (no LM head)."""
    n_crops = sum(crops)
    lm = lm_flops(shape.text, conversation_lengths, supervised_tokens)
    lm += lm_flops(shape.text, image_prompt_lengths) + lm_flops(shape.text, text_prompt_lengths)
    return {"vision": vision_flops(shape, n_crops), "projector": projector_flops(shape, n_crops), "language": lm}


def train_flops(forward: dict | int, mode: str = "full", vision_adapters: bool = False) -> int:
    """FLOPs of a training step from its forward FLOPs (an int, or by part as cafe_step_forward_flops gives).

    full: forward + backward = 3x forward (gradients for activations and for weights), the usual model
    FLOPs of MFU. lora / qlora: the frozen language model still passes gradients back to the projector
    (2x: forward + activation gradients; the adapters' own FLOPs are negligible at rank 16), the projector
    trains fully (3x), and the vision tower runs forward only (1x; 2x with ``vision_adapters``).
    """
    if isinstance(forward, int):
        if mode != "full":
            raise ValueError("give the forward FLOPs by part for lora/qlora")
        return 3 * forward
    if mode == "full":
        return 3 * sum(forward.values())
    return (2 if vision_adapters else 1) * forward["vision"] + 3 * forward["projector"] + 2 * forward["language"]


def crops_per_image(config, pixel: dict) -> list[int]:
    """How many crops of each image in a processor output the vision tower runs on (batched the way
    the model batches them: LLaVA-OneVision reads base views only for images of several-photo prompts)."""
    import torch

    values = pixel.get("pixel_values")
    if values is None:
        return []
    if config.model_type == "llava_onevision":
        from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

        sizes = pixel["image_sizes"]
        per_prompt = pixel.get("batch_num_images")
        patching = [True] * len(sizes) if per_prompt is None else [int(n) == 1 for n in per_prompt for _ in range(int(n))]
        return [image_size_to_num_patches(s, config.image_grid_pinpoints, config.vision_config.image_size) if p else 1
                for s, p in zip(sizes, patching)]
    if config.model_type in ("idefics3", "smolvlm"):
        # The model skips padding crops (all zeros), as Idefics3's forward does.
        flat = values.reshape(values.shape[0], values.shape[1], -1)
        real = (flat == 0).sum(-1) != flat.shape[-1]
        return [int(r.sum()) for r in real]
    if values.dim() == 5:
        return [int(values.shape[1])] * int(values.shape[0])
    return [1] * int(torch.as_tensor(values).shape[0])


def measured_matmul_tflops(dtype: str = "float32", threads: int = 0, n: int = 2048, repeats: int = 5) -> float:
    """This machine's practical peak (TFLOP/s): the best of ``repeats`` (n x n) @ (n x n) matmuls on the CPU
    with ``threads`` torch threads (0: as set). A measured ceiling, not a datasheet one: a rate divided by
    it says how much of what this CPU can actually do a workload reaches."""
    import time

    import torch

    if threads:
        torch.set_num_threads(threads)
    a = torch.randn(n, n, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, dtype=getattr(torch, dtype))
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e12
