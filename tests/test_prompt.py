"""Prompt templates reproduce the reference's exact strings and tokenisation (VisualRWKV-v6/v6.0/src/dataset.py in
github.com/howard-hou/VisualRWKV: process_image_tokens_in_conversations, preprocess, tokenize_with_image_token)."""

import pytest
from helpers import NEWLINE

from visualrwkv_eval.model.prompt import prompt_ids, user_turn
from visualrwkv_eval.model.tokenizer import STOP_TOKEN, world_tokenizer

GQA = "Is the sky dark?\nAnswer the question using a single word or phrase."


@pytest.mark.parametrize(
    ("position", "expected"),
    [
        ("first", "User: <image>\nIs the sky dark?\nAnswer the question using a single word or phrase.\n\nAssistant:"),
        ("middle", "User: Is the sky dark?\n<image>\nIs the sky dark?\n"
                   "Answer the question using a single word or phrase.\n\nAssistant:"),
        ("last", "User: Is the sky dark?\nAnswer the question using a single word or phrase.\n<image>\n\nAssistant:"),
    ],
)  # fmt: skip
def test_positions_match_the_reference_strings(position, expected):
    assert user_turn(GQA, True, position) + "Assistant:" == expected


def test_mmbench_sandwich_keeps_the_mc_suffix_in_both_copies():
    # lmms-eval's MMBench context has a blank line before the suffix; the reference collapses it
    q = "Look at the picture.\nWhich animal is shown?\nA. cat\nB. dog\n\nAnswer with the option's letter from the given choices directly."
    body = "Look at the picture.\nWhich animal is shown?\nA. cat\nB. dog\nAnswer with the option's letter from the given choices directly."
    assert user_turn(q, True) == f"User: {body}\n<image>\n{body}\n\n"


def test_textvqa_sandwich_keeps_ocr_line():
    q = "what is the brand of this camera?\nReference OCR token: dakota, digital\nAnswer the question using a single word or phrase."
    first = "what is the brand of this camera?\nReference OCR token: dakota, digital"
    assert user_turn(q, True) == f"User: {first}\n<image>\n{q}\n\n"


def test_placeholder_in_context_is_not_duplicated():
    assert user_turn("<image>\n" + GQA, True, "first") == user_turn(GQA, True, "first")


def test_each_chunk_and_turn_tokenised_separately():
    tok = world_tokenizer()
    ids = prompt_ids(tok, GQA, True, "middle")
    assert ids.before == [24281, 59, 3917, 22590, 22485, 30575, 64, 11]
    assert ids.after[0] == NEWLINE and ids.after[-4:] == [STOP_TOKEN, 5585, 41693, 59]  # ..., Assistant:
    first = prompt_ids(tok, GQA, True, "first")
    assert first.before == [24281, 59, 33]  # "User: " with the space as its own token before the image
    text_only = prompt_ids(tok, "Hello there", False)
    assert not text_only.has_image and text_only.before == []
    assert text_only.after == tok.encode("User: Hello there\n\n") + [5585, 41693, 59]


def test_unknown_position_is_rejected():
    with pytest.raises(ValueError, match="image_position='centre'"):
        user_turn(GQA, True, "centre")
