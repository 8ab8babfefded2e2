"""The one home of every prompt string and of chat rendering.

The embedding prompts follow the CAFe authors' code exactly (see ../shared/docs/cafe-method.md):
the model is prompted in its chat format and the assistant turn is opened and closed empty, so the
last real token is the closing ``<|im_end|>``. The same strings are used at train, index and query
time; bump ``PROMPT_VERSION`` whenever any string here changes, because it feeds the model
fingerprint and so invalidates indexes built with the old prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

PROMPT_VERSION = "cafe-prompts-v1"

SYSTEM_PROMPT = "You are a helpful assistant."
IMAGE_EMBED_INSTRUCTION = "Compress this image in one word:"
TEXT_EMBED_INSTRUCTION = "Compress this sentence in one word:"
# Composed queries (image + text): the authors drop the "Compress" suffix and use the task's own
# instruction. Ours is retrieval of a photo matching a reference photo modified by the text.
MULTIMODAL_EMBED_INSTRUCTION = "Find a photo like this one that matches: "
DESCRIBE_INSTRUCTION = "Describe the photo."

IMAGE_PLACEHOLDER = "<image>"  # the neutral placeholder our callers write; replaced per model family

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# Qwen2-style ChatML chat template stored with tiny tokenizers so that plain transformers renders the
# same conversation format that `render_chat` produces.
CHATML_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n" + SYSTEM_PROMPT + "<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Turn:
    """One chat turn; ``role`` is "user" or "assistant"."""

    role: str
    content: str


def _as_turn(t) -> Turn:
    if isinstance(t, Turn):
        return t
    if isinstance(t, dict):
        return Turn(t["role"], t["content"])
    return Turn(t.role, t.content)  # duck-typed (e.g. data.formats.Turn)


def render_chat(turns: Iterable, system: str = SYSTEM_PROMPT, add_generation_prompt: bool = False) -> str:
    """Render turns in ChatML (Qwen2's format), system prompt first, each turn closed by ``<|im_end|>\\n``."""
    parts = [f"{IM_START}system\n{system}{IM_END}\n"]
    for t in map(_as_turn, turns):
        if t.role not in ("user", "assistant"):
            raise ValueError(f"unknown chat role {t.role!r}")
        parts.append(f"{IM_START}{t.role}\n{t.content}{IM_END}\n")
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


def with_images(text: str, n_images: int) -> str:
    """User content with ``n_images`` placeholders: kept where the caller placed them, else prepended."""
    found = text.count(IMAGE_PLACEHOLDER)
    if found == n_images:
        return text
    if found:
        raise ValueError(f"text has {found} {IMAGE_PLACEHOLDER} placeholders but {n_images} images were given")
    return f"{IMAGE_PLACEHOLDER}\n" * n_images + text


def _embedding_prompt(user_content: str) -> str:
    # The assistant turn is opened and closed empty; the pooled token is that closing <|im_end|>, so
    # the rendering ends right there (no trailing newline).
    return render_chat([Turn("user", user_content), Turn("assistant", "")]).rstrip("\n")


def image_embedding_prompt() -> str:
    """``<|im_start|>system…<|im_start|>user\\n<image>\\nCompress this image in one word:<|im_end|>\\n<|im_start|>assistant\\n<|im_end|>``."""
    return _embedding_prompt(f"{IMAGE_PLACEHOLDER}\n{IMAGE_EMBED_INSTRUCTION}")


def text_embedding_prompt(text: str) -> str:
    """Text embedding prompt: user content is ``{text}Compress this sentence in one word:`` (no separator)."""
    return _embedding_prompt(f"{text}{TEXT_EMBED_INSTRUCTION}")


def multimodal_embedding_prompt(text: str) -> str:
    """Composed query (image + text) prompt: the task instruction instead of the "Compress" suffix."""
    return _embedding_prompt(f"{IMAGE_PLACEHOLDER}\n{MULTIMODAL_EMBED_INSTRUCTION}{text}")


def conversation_prompt(turns: Sequence, n_images: int = 1) -> str:
    """A training conversation: the first user turn carries the image placeholders."""
    turns = [_as_turn(t) for t in turns]
    if not turns or turns[0].role != "user":
        raise ValueError("a conversation must start with a user turn")
    first = Turn("user", with_images(turns[0].content, n_images))
    return render_chat([first, *turns[1:]])


def generation_prompt(question: str, n_images: int = 0, history: Sequence = ()) -> str:
    """A prompt that asks the model to answer ``question`` about ``n_images`` images."""
    turns = [_as_turn(t) for t in history]
    return render_chat([*turns, Turn("user", with_images(question, n_images))], add_generation_prompt=True)


# Grounded answers (app.answer, and the training recipe that teaches them): each retrieved photo is
# introduced with its number and date, the question follows, and the answer cites photos as [n].
GROUNDED_PHOTO_LINE = "Photo [{n}], taken {date}: " + IMAGE_PLACEHOLDER + "\n"
GROUNDED_QUESTION = "Question: {question}"


def grounded_user_content(question: str, dates: Sequence[str]) -> str:
    """User content of a grounded question over ``len(dates)`` photos numbered [1], [2], ..."""
    photos = "".join(GROUNDED_PHOTO_LINE.format(n=i + 1, date=d) for i, d in enumerate(dates))
    return photos + GROUNDED_QUESTION.format(question=question)


def cite(answer: str, n: int) -> str:
    """The grounded answer format the model is trained to produce: ``"gray [1]"``."""
    return f"{answer} [{n}]"


# Re-ranking retrieved photos (app.answer): what a question says its photo shows, as the caption whose
# likelihood the generator scores against each photo ("a photo of a red car and a dog").
PARTS_DESCRIPTION = "a photo of {parts}"


def describe_parts(parts: Sequence[str]) -> str:
    """``PARTS_DESCRIPTION`` of the things ``parts`` names: "a, b and c"."""
    parts = list(parts)
    if not parts:
        raise ValueError("describe_parts needs at least one part")
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return PARTS_DESCRIPTION.format(parts=joined)


ASSISTANT_HEADER = f"{IM_START}assistant\n"  # tokens before each assistant answer (masked in the LM loss)
