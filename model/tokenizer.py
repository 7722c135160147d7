"""RWKV World tokenizer (vocab rwkv_vocab_v20230424): greedy longest match over UTF-8 bytes.

The vocabulary file is read from the maintained `rwkv` package; it is parsed with ast.literal_eval
(the upstream loader uses eval). Ids 1..65529; every single byte is a token, so nothing is unknown.
"""

from __future__ import annotations

import ast
import functools
from importlib import resources
from pathlib import Path

STOP_TOKEN = 261  # "\n\n": the only token that ends generation in the reference


class WorldTokenizer:
    def __init__(self, vocab_file: str | Path | None = None):
        if vocab_file is None:
            vocab_file = resources.files("rwkv") / "rwkv_vocab_v20230424.txt"
        self.id_to_bytes: dict[int, bytes] = {}
        with open(vocab_file, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                first, last = line.index(" "), line.rindex(" ")
                token = ast.literal_eval(line[first:last].strip())
                token = token.encode("utf-8") if isinstance(token, str) else token
                if len(token) != int(line[last:]):
                    raise ValueError(f"{vocab_file}:{line_no}: token length does not match the stated length")
                self.id_to_bytes[int(line[:first])] = token
        self.bytes_to_id = {b: i for i, b in self.id_to_bytes.items()}
        # Longest token length per first byte bounds the greedy search at each position.
        self._max_len = [0] * 256
        for b in self.bytes_to_id:
            self._max_len[b[0]] = max(self._max_len[b[0]], len(b))

    def encode_bytes(self, src: bytes) -> list[int]:
        ids, pos, table = [], 0, self.bytes_to_id
        while pos < len(src):
            for n in range(min(self._max_len[src[pos]], len(src) - pos), 0, -1):
                token_id = table.get(src[pos : pos + n])
                if token_id is not None:
                    ids.append(token_id)
                    pos += n
                    break
        return ids

    def encode(self, text: str) -> list[int]:
        return self.encode_bytes(text.encode("utf-8"))

    def decode_bytes(self, ids: list[int]) -> bytes:
        # Ids outside the vocabulary (0, 65530..65535) decode to nothing, as invalid output.
        return b"".join(self.id_to_bytes.get(int(i), b"\xff") for i in ids)

    def decode(self, ids: list[int]) -> str:
        """The reference decode: any invalid UTF-8 (or unknown id) turns the whole string into U+FFFD."""
        try:
            return self.decode_bytes(ids).decode("utf-8")
        except UnicodeDecodeError:
            return "\ufffd"


@functools.cache
def world_tokenizer() -> WorldTokenizer:
    return WorldTokenizer()
