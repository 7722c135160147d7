"""The World tokenizer reproduces the reference ids and round-trips any text."""

import pytest
from helpers import IMAGE_TOKEN_INDEX, NEWLINE
from hypothesis import given, settings
from hypothesis import strategies as st

from visualrwkv_eval.model.tokenizer import STOP_TOKEN, world_tokenizer

tok = world_tokenizer()


def test_spec_ids():
    assert tok.encode("User: ") == [24281, 59, 33]
    assert tok.encode("\n") == [NEWLINE] == [11]
    assert tok.encode("\n\n") == [STOP_TOKEN] == [261]
    assert tok.encode("Assistant:") == [5585, 41693, 59]
    assert tok.encode(" Yes") == [21186] and tok.encode("Yes") == [6831]
    assert tok.encode("\n\n\n") == [3328] and tok.encode(" \n\n") == [3336]


def test_sandwich_gqa_example_ids():
    # the 30 ids of the middle-position (sandwich) GQA prompt as the reference tokenizes it
    # (VisualRWKV-v6/v6.0/src/dataset.py, tokenize_with_image_token), IMAGE_TOKEN_INDEX standing for the image
    ids = tok.encode("User: Is the sky dark?\n") + [IMAGE_TOKEN_INDEX]
    ids += tok.encode("\nIs the sky dark?\nAnswer the question using a single word or phrase.\n\n")
    ids += tok.encode("Assistant:")
    assert ids == [24281, 59, 3917, 22590, 22485, 30575, 64, 11, -200, 11, 1140, 22590, 22485, 30575, 64, 11,
                   40301, 22590, 57009, 40085, 332, 47289, 32497, 4715, 46808, 47, 261, 5585, 41693, 59]  # fmt: skip


@pytest.mark.parametrize(
    "text", ["", "a", "请直接回答选项字母。", "emoji 🐈‍⬛ and 🇫🇷", "\x00\xff\u200b", "tab\there\r\n"]
)
def test_round_trip_examples(text):
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip_any_text(text):
    assert tok.decode(tok.encode(text)) == text


@pytest.fixture(scope="module")
def official():
    from importlib import resources

    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    return TRIE_TOKENIZER(str(resources.files("rwkv") / "rwkv_vocab_v20230424.txt"))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abc ABC\n\n.,:;?!'\"0123456789 的是了我你Русский🙂é")), max_size=80))
def test_same_ids_as_the_official_trie(official, text):
    assert tok.encode(text) == official.encode(text)


def test_invalid_utf8_decodes_as_the_reference():
    assert tok.decode([0]) == "\ufffd"  # id 0 is not in the vocabulary
    partial = tok.encode("é")
    assert tok.decode_bytes(partial) == "é".encode()
    assert tok.decode([tok.bytes_to_id[b"\xc3"]]) == "\ufffd"
