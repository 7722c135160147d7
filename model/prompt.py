"""Prompt templates of the reference (spec 3): where the image goes, and how the prompt is tokenised.

One user turn and an empty assistant turn: "User: {value}\n\n" + "Assistant:". Each turn, and inside a
turn each chunk around the image, is tokenised on its own and the ids are concatenated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .tokenizer import WorldTokenizer

POSITIONS = ("middle", "first", "last")
IMAGE = "<image>"
SHORT_ANSWER = "Answer the question using a single word or phrase."


@dataclass(frozen=True)
class PromptIds:
    """Token ids before and after the image slot (`has_image` False: text only, all ids in `after`)."""

    before: list[int]
    after: list[int]
    has_image: bool


def _clean(text: str) -> str:
    return re.sub(r"\n(\s*\n)+", "\n", text.strip())


def user_turn(question: str, has_image: bool, position: str = "middle") -> str:
    """The user's turn text with the <image> placeholder where `position` puts it."""
    value = _clean(question.replace(IMAGE, ""))
    if has_image:
        if position == "first":
            value = f"{IMAGE}\n{value}"
        elif position == "last":
            value = f"{value}\n{IMAGE}"
        elif position == "middle":  # the sandwich: the question without the short-answer sentence, image, all
            value = f"{_clean(value.replace(SHORT_ANSWER, ''))}\n{IMAGE}\n{value}"
        else:
            raise ValueError(f"image_position={position!r}: expected one of {', '.join(POSITIONS)}")
    return f"User: {value}\n\n"


def prompt_ids(tokenizer: WorldTokenizer, question: str, has_image: bool, position: str = "middle") -> PromptIds:
    """Ids of a one-turn prompt ending in "Assistant:", split at the image slot."""
    chunks = user_turn(question, has_image, position).split(IMAGE)
    assistant = tokenizer.encode("Assistant:")
    if not has_image:
        return PromptIds([], tokenizer.encode(chunks[0]) + assistant, False)
    before, after = (tokenizer.encode(c) for c in chunks)
    return PromptIds(before, after + assistant, True)
