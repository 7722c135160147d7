"""Crash-safe resume: every finished answer is appended to a journal (JSON lines, fsync'd per batch) and a rerun
serves the answers the journal holds instead of recomputing them.

- Each process writes its own new file (`rank<R>-<pid>-<time>.jsonl`) and reads every file of the folder, so
  sharded runs (each rank its own journal), reruns with another process count and concurrent runs never write
  to the same file. A line counts only when it is complete (ends with a newline), parses and its CRC matches: a
  line torn by a kill is ignored, never trusted.
- The key of an answer is a SHA-256 over everything that can change it: the checkpoint's content, the vision
  tower's weights and preprocessing, dtype, device type, WKV backend, scan, image position, this package's
  version, and per request the task, split, doc id, the data set's fingerprint, the full context and the
  generation arguments. An answer is never served to a request that differs in any of them.
- The checkpoint's content is fingerprinted by xxh3-128 over the whole file (memory-bandwidth speed, so the
  cost is reading the file once, which loading it does anyway), remembered per (device, inode, size, mtime,
  ctime) in the journal folder: a rerun does not hash again, while any rewrite of the file, which always
  changes its ctime, hashes again. A different file at the same path therefore never reuses answers.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import xxhash
from loguru import logger

FORMAT = 1
CHUNK = 16 << 20
# File times tick coarsely (milliseconds): a file changed within this many seconds of being hashed could change
# again without a new stamp, so its hash is not remembered (git's "racily clean" rule)
RACY_SECONDS = 2.0


@dataclass
class Entry:
    text: str
    prompt_tokens: int
    new_tokens: int


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def file_fingerprint(path: str | Path, memo: Path | None = None) -> str:
    """xxh3-128 of the file's bytes, remembered in `memo` (JSON) under the file's stat stamp."""
    path = Path(path).resolve()
    known = {}
    if memo is not None and memo.is_file():
        try:
            known = json.loads(memo.read_text())
        except ValueError:
            known = {}  # a memo torn by a kill: hash again
    stamp = f"{path}|{_stamp(path)}"
    if stamp in known:
        return known[stamp]
    start, h = time.perf_counter(), xxhash.xxh3_128()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    digest = h.hexdigest()
    seconds = time.perf_counter() - start
    logger.info(f"journal: fingerprinted {path} ({path.stat().st_size / 2**30:.2f} GiB) in {seconds:.1f} s")
    st = path.stat()
    racy = time.time() - max(st.st_mtime, st.st_ctime) < RACY_SECONDS
    if memo is not None and not racy and stamp == f"{path}|{_stamp(path)}":  # unchanged while hashed
        known[stamp] = digest
        memo.parent.mkdir(parents=True, exist_ok=True)  # the model key is made before the journal's folder
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, memo)
    return digest


def module_fingerprint(module: torch.nn.Module | None) -> str | None:
    """xxh3-128 over a module's parameter names and bytes (the vision tower: its weights may come from the
    checkpoint or from the tower's own folder)."""
    if module is None:
        return None
    h = xxhash.xxh3_128()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def request_key(model_key: str, fields: dict) -> str:
    """SHA-256 of the model key and one request's fields (JSON, sorted; non-JSON values by repr)."""
    payload = json.dumps([FORMAT, model_key, fields], sort_keys=True, default=repr)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _line(key: str, entry: Entry, label: str) -> str:
    body = {"key": key, "text": entry.text, "prompt_tokens": entry.prompt_tokens, "new_tokens": entry.new_tokens}
    crc = zlib.crc32(json.dumps(body, sort_keys=True).encode("utf-8"))
    return json.dumps({**body, "crc": crc, "request": label}) + "\n"


def _parse(line: str) -> tuple[str, Entry] | None:
    """A complete, intact journal line -> (key, entry); anything else (torn, foreign, corrupt) -> None."""
    if not line.endswith("\n"):
        return None
    try:
        d = json.loads(line)
        body = {k: d[k] for k in ("key", "text", "prompt_tokens", "new_tokens")}
        if zlib.crc32(json.dumps(body, sort_keys=True).encode("utf-8")) != d["crc"]:
            return None
        return body["key"], Entry(str(body["text"]), int(body["prompt_tokens"]), int(body["new_tokens"]))
    except (ValueError, KeyError, TypeError):
        return None


class Journal:
    """The answers of a journal folder for a set of wanted keys, and this process's file to add to."""

    def __init__(self, folder: str | Path, rank: int = 0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"rank{rank}-{os.getpid()}-{time.time_ns()}.jsonl"
        self._file = None

    def load(self, wanted: set[str]) -> dict[str, Entry]:
        """Entries of the wanted keys found in any journal file of the folder (only those: memory stays
        proportional to the requests, not to everything the folder ever held)."""
        found: dict[str, Entry] = {}
        for path in sorted(self.folder.glob("*.jsonl")):
            with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
                for line in f:
                    parsed = _parse(line)
                    if parsed is not None and parsed[0] in wanted:
                        found[parsed[0]] = parsed[1]
        return found

    def append(self, items: list[tuple[str, Entry, str]]) -> None:
        """Add (key, entry, label) items in one write, then fsync: after this returns they survive a kill."""
        if not items:
            return
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8", newline="\n")
            _fsync_dir(self.folder)  # the new file's name must survive a crash too
        self._file.write("".join(_line(k, e, label) for k, e, label in items))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def model_key(model, pretrained: str | Path, memo: Path | None) -> str:
    """Everything about the loaded model that can change an answer (the batch size cannot: see rowwise.py)."""
    from visualrwkv_eval import __version__

    vision = getattr(model, "vision", None)
    processor = getattr(vision, "processor", None)
    parts = {
        "package": __version__,
        "checkpoint": file_fingerprint(pretrained, memo),
        "vision": module_fingerprint(vision),
        "processor": processor.to_json_string() if hasattr(processor, "to_json_string") else repr(processor),
        "dtype": str(model.dtype),
        "device": model.device.type,  # CPU and CUDA kernels round differently
        "backend": model.backend,
        "scan": model.scan,
        "image_position": model.image_position,
    }
    if getattr(model, "pad", None) is not None:  # VisualRWKV-7's left padding: exact and once answer differently
        parts["padding"] = model.padding
    return json.dumps(parts, sort_keys=True)


def dataset_fingerprint(task_dict: dict, task: str, split: str) -> str | None:
    """The `datasets` fingerprint of a task's split: changes with its data files and processing."""
    try:
        return getattr(task_dict[task][split], "_fingerprint", None)
    except (KeyError, TypeError, IndexError):
        return None


def output_path_of(bound_method) -> str | None:
    """lmms-eval's --output_path, as the task that built a request knows it (evaluate() sets task.args to the
    CLI's arguments before it dispatches requests); None from the Python API without cli_args."""
    task = getattr(bound_method, "__self__", None)
    return getattr(getattr(task, "args", None), "output_path", None) or None
