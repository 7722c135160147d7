"""Prompts as segments (token ids and image slots), and VisualRWKV-6's template: where the image goes, and how
the prompt is tokenised (github.com/howard-hou/VisualRWKV, VisualRWKV-v6/v6.0/src/dataset.py and evaluate.py).

One user turn and an empty assistant turn: "User: {value}\n\n" + "Assistant:". Each turn, and inside a
turn each chunk around the image, is tokenised on its own and the ids are concatenated. A `Prompt` may hold
several image slots; VisualRWKV-6's template uses at most one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .tokenizer import WorldTokenizer

POSITIONS = ("middle", "first", "last")
IMAGE = "<image>"
SHORT_ANSWER = "Answer the question using a single word or phrase."


@dataclass(frozen=True)
class ImageSlot:
    """Where image number `index` of the request goes (its projected features fill the slot)."""

    index: int


Segment = list[int] | ImageSlot


@dataclass(frozen=True)
class Prompt:
    """A prompt as segments in order: token-id lists and image slots."""

    segments: tuple[Segment, ...]

    @property
    def num_images(self) -> int:
        return sum(isinstance(s, ImageSlot) for s in self.segments)

    @property
    def has_image(self) -> bool:
        return self.num_images > 0

    @property
    def before(self) -> list[int]:
        """Ids before the first image slot ([] without an image: every id is in `after`)."""
        if not self.has_image:
            return []
        first = next(i for i, s in enumerate(self.segments) if isinstance(s, ImageSlot))
        return [t for s in self.segments[:first] for t in s]

    @property
    def after(self) -> list[int]:
        """Ids after the last image slot (all ids without an image)."""
        slots = [i for i, s in enumerate(self.segments) if isinstance(s, ImageSlot)]
        rest = self.segments[slots[-1] + 1 :] if slots else self.segments
        return [t for s in rest for t in s]


PromptIds = Prompt  # the one-image view (before, after, has_image) that older code reads


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


def prompt_ids(tokenizer: WorldTokenizer, question: str, has_image: bool, position: str = "middle") -> Prompt:
    """VisualRWKV-6's one-turn prompt ending in "Assistant:": [ids, image, ids] (or [ids] without an image)."""
    chunks = user_turn(question, has_image, position).split(IMAGE)
    assistant = tokenizer.encode("Assistant:")
    if not has_image:
        return Prompt((tokenizer.encode(chunks[0]) + assistant,))
    before, after = (tokenizer.encode(c) for c in chunks)
    return Prompt((before, ImageSlot(0), after + assistant))


def prompt_ids7(tokenizer: WorldTokenizer, question: str, num_images: int | bool, position: str = "first") -> Prompt:
    """VisualRWKV-7's one-turn prompt (github.com/howard-hou/VisualRWKV, VisualRWKV-v7/v7.00/src/dataset.py):
    every image first, "User: " + "<image>\\n" * n + question + "\\n\\n", then "Assistant:"; each turn and each
    chunk between image slots tokenised on its own, so "User: " ends in its own space token and the question chunk
    starts with "\\n". `num_images` = n (a bool counts as 0 or 1); n = 0 gives the plain text prompt (the reference
    skips text-only items; here they are answered without image rows)."""
    if position != "first":
        raise ValueError(f"image_position={position!r}: VisualRWKV-7 puts its images first (image_position=first)")
    value = (f"{IMAGE}\n" * int(num_images) + _clean(question.replace(IMAGE, ""))).strip()
    chunks = f"User: {value}\n\n".split(IMAGE)
    segments: list[Segment] = [tokenizer.encode(chunks[0])]
    for i, chunk in enumerate(chunks[1:]):
        segments += [ImageSlot(i), tokenizer.encode(chunk)]
    segments[-1] = segments[-1] + tokenizer.encode("Assistant:")
    return Prompt(tuple(segments))
