"""Model families: everything CAFe needs to know about one kind of image-text-to-text checkpoint.

The rest of cafe_core (and the trainer) is written against a `Family`, looked up from the checkpoint's
``config.model_type``:

- ``chat``: how the family writes a conversation (`prompts.ChatFormat`): turn headers, the end-of-turn
  token that closes every turn, ends generation and, under CAFe's "compress this in one word" prompts,
  is the pooled token (the assistant turn is opened and closed empty).
- module names: where the vision encoder, the projector and the language model live, which give the
  LoRA targets, the QLoRA full-precision modules and the vision learning-rate group.

Adding a family is one `Family(...)` entry in FAMILIES plus, for tests, a tiny preset in
cafe_core/tiny.py (see the README's developer section). Two ship: LLaVA / LLaVA-OneVision (Qwen2
ChatML) and Idefics3 / SmolVLM.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ModelLoadError
from .prompts import CHATML, SMOLVLM, ChatFormat


@dataclass(frozen=True)
class Family:
    """One kind of checkpoint (see module doc). Module names are attribute names under ``model.model``."""

    name: str
    model_types: tuple[str, ...]
    chat: ChatFormat
    vision_module: str
    projector_module: str
    language_module: str
    # model_types whose processor reads several crops of a photo and that have a cheaper one-view
    # embedding path (cafe_core.crops: "base"); the family's other types read one view either way.
    multi_crop_types: tuple[str, ...] = ()

    @property
    def lora_targets(self) -> str:
        """peft regex: every attention and MLP projection of the language model."""
        return rf".*{self.language_module}.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

    @property
    def vision_lora_targets(self) -> str:
        return rf".*{self.vision_module}.*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"

    @property
    def full_precision_modules(self) -> list[str]:
        """Kept unquantized under QLoRA: the projector (trained fully) and lm_head (transformers' default)."""
        return [rf".*{self.projector_module}", "lm_head"]

    def is_vision_parameter(self, name: str) -> bool:
        """Parameters of the vision encoder (trained at ``vision_lr``)."""
        return f"{self.vision_module}." in name

    def vision_encoder(self, model):
        """The vision encoder module of a loaded (possibly peft-wrapped) model."""
        return getattr(multimodal_base(model), self.vision_module)

    def language_model(self, model):
        """The language model (no lm_head) of a loaded (possibly peft-wrapped) model."""
        return getattr(multimodal_base(model), self.language_module)

    def projector(self, model):
        """The projector module (vision features -> language-model tokens) of a loaded (possibly peft-wrapped) model."""
        return getattr(multimodal_base(model), self.projector_module)


def multimodal_base(model):
    """The multimodal base model (vision + projector + LM, no lm_head) of an HF ForConditionalGeneration,
    looking through a peft wrapper if present."""
    m = model
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    return m.model


LLAVA = Family("llava", ("llava", "llava_onevision", "llava_next"), CHATML,
               vision_module="vision_tower", projector_module="multi_modal_projector", language_module="language_model",
               multi_crop_types=("llava_onevision",))
IDEFICS3 = Family("idefics3", ("idefics3", "smolvlm"), SMOLVLM,
                  vision_module="vision_model", projector_module="connector", language_module="text_model",
                  multi_crop_types=("idefics3", "smolvlm"))
FAMILIES: tuple[Family, ...] = (LLAVA, IDEFICS3)


def family_for(config) -> Family:
    """The family of a model config (by ``model_type``); ModelLoadError for one not supported yet."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES for t in f.model_types)
    raise ModelLoadError(
        f"'{model_type}' models are not supported yet (supported: {', '.join(known)}). Adding one is a "
        "Family entry in cafe_core/family.py: see the README's developer section."
    )
