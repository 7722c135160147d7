"""Throughput accounting for lmms-eval runs: per task samples/s, prefill and decode tokens/s, peak memory.

A batch may mix tasks: its prefill time is shared out by prompt rows and its decode time by generated tokens.
The totals go to lmms-eval's `throughput` section of the results (lmms_eval.models.model_utils.gen_metrics).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from loguru import logger

from visualrwkv_eval.measure import peak_memory_gib, peak_memory_reset


@dataclass
class TaskCounts:
    samples: int = 0
    prefill_rows: int = 0
    prefill_seconds: float = 0.0
    decode_tokens: int = 0
    decode_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        return self.prefill_seconds + self.decode_seconds


def _rate(amount: float, seconds: float) -> float:
    return amount / seconds if seconds > 0 else 0.0


class Throughput:
    def __init__(self, device: torch.device):
        self.device = device
        self.tasks: dict[str, TaskCounts] = defaultdict(TaskCounts)
        peak_memory_reset(device)  # the peak of the generation, on the CPU too

    def add_batch(
        self, tasks: list[str], prompt_rows: list[int], new_tokens: list[int], stats, new_samples: bool = True
    ) -> None:
        """One batch's work; `new_samples` False for a further round of conversations already counted."""
        rows, tokens = sum(prompt_rows) or 1, sum(new_tokens) or 1
        for task, p, n in zip(tasks, prompt_rows, new_tokens):
            counts = self.tasks[task]
            counts.samples += new_samples
            counts.prefill_rows += p
            counts.prefill_seconds += stats.prefill_seconds * p / rows
            counts.decode_tokens += n
            counts.decode_seconds += stats.decode_seconds * n / tokens

    def report(self) -> None:
        """Log a line per task and record the run's totals (and per-task rates) with lmms-eval."""
        if not self.tasks:
            return
        from lmms_eval.models.model_utils.gen_metrics import log_metrics

        peak = peak_memory_gib(self.device)
        extra: dict[str, float] = {"peak_memory_gib": peak}
        for task, c in sorted(self.tasks.items()):
            rates = {
                "samples_per_s": _rate(c.samples, c.seconds),
                "prefill_tokens_per_s": _rate(c.prefill_rows, c.prefill_seconds),
                "decode_tokens_per_s": _rate(c.decode_tokens, c.decode_seconds),
            }
            logger.info(
                f"{task}: {rates['samples_per_s']:.2f} samples/s, prefill {rates['prefill_tokens_per_s']:.0f} "
                f"tokens/s, decode {rates['decode_tokens_per_s']:.1f} tokens/s, peak memory {peak:.2f} GiB"
            )
            extra.update({f"{task}/{k}": v for k, v in rates.items()})
        total = TaskCounts()
        for c in self.tasks.values():
            total.samples += c.samples
            total.decode_tokens += c.decode_tokens
            total.prefill_rows += c.prefill_rows
            total.prefill_seconds += c.prefill_seconds
            total.decode_seconds += c.decode_seconds
        extra["samples_per_s"] = _rate(total.samples, total.seconds)
        extra["prefill_tokens_per_s"] = _rate(total.prefill_rows, total.prefill_seconds)
        extra["decode_tokens_per_s"] = _rate(total.decode_tokens, total.decode_seconds)
        log_metrics(total.seconds, total.decode_tokens, _rate(total.decode_tokens, total.seconds), extra)
