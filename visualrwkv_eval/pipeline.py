"""Images prepared while the model runs: decoding (lmms-eval's doc_to_visual) and CLIP preprocessing of the next
batches happen on worker threads, a bounded number of batches ahead, and each batch's inputs are dropped as soon
as it has run, so memory depends on the batch size, never on the data set's size.

Threads, not processes: doc_to_visual needs the task's dataset objects (no cheap way to hand them to another
process), and the heavy parts (JPEG decoding, PIL resizing, numpy normalisation) release the GIL. The result of
preparing an item does not depend on which thread prepared it, so answers do not depend on the worker count.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Prepared:
    """A request's image input: its pixels (None: the request has no image) or why it has none usable."""

    pixels: torch.Tensor | None = None
    error: str | None = None


def default_workers(device: torch.device, processes: int = 1) -> int:
    """Workers per process when the user does not say. On CUDA the host only feeds the device: use most of this
    process's share of the cores. On CPU the model itself wants the cores; one worker still hides the decoding
    behind the model's single-threaded moments (see `visualrwkv-eval bench scale` for measurements)."""
    cores = max(1, (os.cpu_count() or 1) // max(1, processes))
    if device.type == "cuda":
        return max(1, min(8, cores - 1))
    return 1


def rss_anon_mib() -> int | None:
    """This process's anonymous resident memory (heap, tensors; not mapped files), Linux only."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) // 1024 for line in f if line.startswith("RssAnon:"))
    except (OSError, StopIteration):
        return None


class Prefetcher(Generic[T, R]):
    """Yields (batch, [prepare(item) for item in batch]) in batch order. With `workers` > 0, while the caller
    works on one batch the next `depth` batches are being prepared; with 0, each batch is prepared when asked."""

    def __init__(self, prepare: Callable[[T], R], workers: int, depth: int = 2) -> None:
        if workers < 0:
            raise ValueError(f"image_workers={workers}: expected 0 (prepare images inline) or more")
        if depth < 1:
            raise ValueError(f"depth={depth}: at least one batch must be prepared ahead")
        self.prepare, self.workers, self.depth = prepare, workers, depth

    def run(self, batches: Iterable[list[T]]) -> Iterator[tuple[list[T], list[R]]]:
        if self.workers == 0:
            for batch in batches:
                yield batch, [self.prepare(item) for item in batch]
            return
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="visualrwkv-images")
        try:
            yield from self._overlapped(pool, iter(batches))
        finally:  # also when the caller stops early (an exception in the model): no orphan work
            pool.shutdown(wait=True, cancel_futures=True)

    def _overlapped(self, pool: ThreadPoolExecutor, batches: Iterator[list[T]]):
        queue: deque[tuple[list[T], list[Future]]] = deque()

        def submit() -> None:
            batch = next(batches, None)
            if batch is not None:
                queue.append((batch, [pool.submit(self.prepare, item) for item in batch]))

        for _ in range(self.depth):
            submit()
        while queue:
            batch, futures = queue.popleft()
            results = [f.result() for f in futures]  # an unexpected exception (a bug) propagates
            submit()  # keep `depth` batches in preparation while the caller runs this one
            yield batch, results
            del results  # the caller is done with this batch: its pixels go now, not at the next yield
