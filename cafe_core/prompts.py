"""The one home of every prompt string and of chat rendering.

The embedding prompts follow the CAFe authors' code exactly (see ../shared/docs/cafe-method.md):
the model is prompted in its chat format and the assistant turn is opened and closed empty, so the
last real token is the closing ``<|im_end|>``. The same strings are used at train, index and query
time; bump ``PROMPT_VERSION`` whenever any string here changes, because it feeds the model
fingerprint and so invalidates indexes built with the old prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

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


@dataclass(frozen=True)
class Turn:
    """One chat turn; ``role`` is "system", "user" or "assistant"."""

    role: str
    content: str


def as_turn(t) -> Turn:
    if isinstance(t, Turn):
        return t
    if isinstance(t, dict):
        return Turn(t["role"], t["content"])
    return Turn(t.role, t.content)  # duck-typed (e.g. data.formats.Turn)


@dataclass(frozen=True)
class ChatFormat:
    """How a model family writes a conversation as text (cafe_core.family picks one per checkpoint).

    begin: text before the first turn; header(role, content): text opening a turn; end: the
    end-of-turn token closing every turn (generation stops there; embeddings pool it); after_end: text
    between turns; default_system: the system prompt the family's own template puts first (None: none).
    template: the same format as a Jinja chat template, for tokenizers built here. image_sep: text after
    an image placeholder that opens a turn.
    """

    name: str
    begin: str
    header: Callable[[str, str], str]
    end: str
    after_end: str
    default_system: str | None
    template: str
    image_sep: str = "\n"  # written after each image placeholder that opens a turn

    def render(self, turns: Iterable, system: str | None | bool = True, add_generation_prompt: bool = False) -> str:
        """Turns as one string. system: True for the family's default system prompt, a string for that
        one, None/False for none."""
        turns = [as_turn(t) for t in turns]
        if system is True:
            system = self.default_system
        if system:
            turns = [Turn("system", system), *turns]
        parts = [self.begin]
        for t in turns:
            if t.role not in ("system", "user", "assistant"):
                raise ValueError(f"unknown chat role {t.role!r}")
            parts.append(f"{self.header(t.role, t.content)}{t.content}{self.end}{self.after_end}")
        if add_generation_prompt:
            parts.append(self.generation_header)
        return "".join(parts)

    @property
    def generation_header(self) -> str:
        """The text that opens the assistant's answer (LM labels start after it)."""
        return self.header("assistant", "")


def _chatml_header(role: str, content: str) -> str:
    return f"{IM_START}{role}\n"


def _smolvlm_header(role: str, content: str) -> str:
    # SmolVLM's template: "User:<image>..." when the turn opens with an image, "User: ..." otherwise;
    # an empty turn (the generation prompt, CAFe's empty assistant turn) is "Assistant:".
    tight = not content or content.startswith(IMAGE_PLACEHOLDER)
    return role.capitalize() + (":" if tight else ": ")


# Qwen2's ChatML (LLaVA-OneVision): the system prompt first, every turn "<|im_start|>role\n...<|im_end|>\n".
CHATML = ChatFormat(
    name="chatml",
    begin="",
    header=_chatml_header,
    end=IM_END,
    after_end="\n",
    default_system=SYSTEM_PROMPT,
    template=(
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n" + SYSTEM_PROMPT + "<|im_end|>\\n' }}{% endif %}"
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>\\n' }}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
        "{{ '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
)

# SmolVLM / Idefics3 (HuggingFaceTB/SmolVLM-*-Instruct's template): "<|im_start|>User:<image>...<end_of_utterance>\n
# Assistant: ...<end_of_utterance>\n", no system prompt of its own.
SMOLVLM = ChatFormat(
    name="smolvlm",
    begin=IM_START,
    header=_smolvlm_header,
    end="<end_of_utterance>",
    after_end="\n",
    default_system=None,
    image_sep="",
    template=(
        "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
        "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
        "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
        "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    ),
)

CHATML_TEMPLATE = CHATML.template  # what tiny ChatML tokenizers store, so plain transformers renders the same


def render_chat(turns: Iterable, system: str | None | bool = True, add_generation_prompt: bool = False,
                chat: ChatFormat = CHATML) -> str:
    """Render turns in ``chat`` (default ChatML: system prompt first, each turn closed by ``<|im_end|>\\n``)."""
    return chat.render(turns, system, add_generation_prompt)


def with_images(text: str, n_images: int, chat: ChatFormat = CHATML) -> str:
    """User content with ``n_images`` placeholders: kept where the caller placed them, else prepended."""
    found = text.count(IMAGE_PLACEHOLDER)
    if found == n_images:
        return text
    if found:
        raise ValueError(f"text has {found} {IMAGE_PLACEHOLDER} placeholders but {n_images} images were given")
    return f"{IMAGE_PLACEHOLDER}{chat.image_sep}" * n_images + text


def _embedding_prompt(user_content: str, chat: ChatFormat) -> str:
    # The assistant turn is opened and closed empty; the pooled token is that closing end-of-turn
    # token, so the rendering ends right there.
    text = chat.render([Turn("user", user_content), Turn("assistant", "")])
    return text[: len(text) - len(chat.after_end)] if chat.after_end and text.endswith(chat.after_end) else text


def image_embedding_prompt(chat: ChatFormat = CHATML) -> str:
    """ChatML: ``<|im_start|>system…<|im_start|>user\\n<image>\\nCompress this image in one word:<|im_end|>\\n<|im_start|>assistant\\n<|im_end|>``."""
    return _embedding_prompt(f"{IMAGE_PLACEHOLDER}{chat.image_sep}{IMAGE_EMBED_INSTRUCTION}", chat)


def text_embedding_prompt(text: str, chat: ChatFormat = CHATML) -> str:
    """Text embedding prompt: user content is ``{text}Compress this sentence in one word:`` (no separator)."""
    return _embedding_prompt(f"{text}{TEXT_EMBED_INSTRUCTION}", chat)


def multimodal_embedding_prompt(text: str, chat: ChatFormat = CHATML) -> str:
    """Composed query (image + text) prompt: the task instruction instead of the "Compress" suffix."""
    return _embedding_prompt(f"{IMAGE_PLACEHOLDER}{chat.image_sep}{MULTIMODAL_EMBED_INSTRUCTION}{text}", chat)


def conversation_prompt(turns: Sequence, n_images: int = 1, chat: ChatFormat = CHATML) -> str:
    """A training conversation: the first user turn carries the image placeholders."""
    turns = [as_turn(t) for t in turns]
    if not turns or turns[0].role != "user":
        raise ValueError("a conversation must start with a user turn")
    first = Turn("user", with_images(turns[0].content, n_images, chat))
    return chat.render([first, *turns[1:]])


def generation_prompt(question: str, n_images: int = 0, history: Sequence = (), chat: ChatFormat = CHATML) -> str:
    """A prompt that asks the model to answer ``question`` about ``n_images`` images."""
    turns = [as_turn(t) for t in history]
    return chat.render([*turns, Turn("user", with_images(question, n_images, chat))], add_generation_prompt=True)


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


