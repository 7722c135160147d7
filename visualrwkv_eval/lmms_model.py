"""The lmms-eval model `visualrwkv` (class VisualRWKVLmms): request batching and result plumbing around
visualrwkv_eval.model.

Prompt templates, image handling and all model logic live in model/; this class turns lmms-eval requests
into GenerationRequests, runs them in batches (splitting a batch that runs out of memory), and hands back
answers with their token counts. Nothing here depends on the model's family.
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import replace
from pathlib import Path

import torch
from accelerate import Accelerator
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from loguru import logger
from PIL import Image
from tqdm import tqdm

from visualrwkv_eval.journal import Entry, Journal, dataset_fingerprint, model_key, output_path_of, request_key
from visualrwkv_eval.model import (
    DEFAULT_VISION_TOWER,
    BatchStats,
    GenerationRequest,
    continue_batch,
    generate_batch,
    load_model,
    loglikelihood_batch,
    start_conversation,
)
from visualrwkv_eval.model.options import parse_device
from visualrwkv_eval.pipeline import Prefetcher, Prepared, default_workers, rss_anon_mib
from visualrwkv_eval.settings import generation_settings, parse_batch_size, whole_number
from visualrwkv_eval.throughput import Throughput

MODEL_ARGS = (
    "pretrained", "vision_tower", "dtype", "device", "image_position", "scan", "kernel", "max_new_tokens",
    "image_workers", "journal", "padding",
)  # fmt: skip
JOURNAL_OFF = ("off", "none", "false", "no", "0", "")
MAX_ROUNDS = 64  # a multi-round task that never signals its end
AUTO_BATCH_CAP = 256  # batch_size=auto never goes beyond this unless max_batch_size says otherwise
# C0 control characters (but tab and newlines): meaningless in an answer, and lmms-eval's xlsx writers
# (MMBench submissions) reject them after the whole run has been computed
CONTROL = dict.fromkeys([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20)])


class SetupError(RuntimeError):
    """Requests that the model as set up cannot answer at all (an image task on a text-only checkpoint)."""


class VisualRWKVLmms(lmms):
    """lmms-eval's model `visualrwkv` (the nn.Module is visualrwkv_eval.model.VisualRWKV)."""

    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        vision_tower: str = DEFAULT_VISION_TOWER,
        dtype: str | None = None,
        device: str | None = None,
        image_position: str | None = None,  # None: the checkpoint family's (VisualRWKV-6: middle)
        scan: str | None = None,  # None: the family's (VisualRWKV-6: bidirectional)
        kernel: str = "auto",
        max_new_tokens: int = 128,
        image_workers: int | None = None,
        journal: str | bool = "auto",
        padding: str | None = None,  # VisualRWKV-7: exact (default) | once (model/left_pad.py)
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        **unknown,
    ) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"unknown model_args {sorted(unknown)}; valid model_args: {', '.join(MODEL_ARGS)}")
        if not pretrained:
            raise ValueError("model_args needs pretrained=<path to a VisualRWKV .pth or .safetensors>")
        # settings that would give an empty run fail here, before the checkpoint is read (load_model checks its own)
        fixed_batch, batch_cap = parse_batch_size(batch_size, max_batch_size)
        max_new_tokens = whole_number("max_new_tokens", max_new_tokens)
        if image_workers is not None:  # before the (long) model load
            image_workers = whole_number(
                "image_workers", image_workers, "a whole number >= 0 (0: prepare inline)", minimum=0
            )
        self.accelerator = Accelerator()
        self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
        if (device is None or device == "cuda") and torch.cuda.is_available():
            device = f"cuda:{self.accelerator.local_process_index}"  # each process its own GPU
        self._device = parse_device(device)
        self.model = load_model(
            pretrained,
            vision_tower,
            dtype,
            self._device,
            scan=scan,
            image_position=image_position,
            kernel=kernel,
            padding=padding,
        )
        self.max_new_tokens = max_new_tokens
        size = self._auto_batch_size() if fixed_batch is None else fixed_batch
        cap = AUTO_BATCH_CAP if fixed_batch is None and batch_cap is None else batch_cap
        self.batch_size_per_gpu = size if cap is None else min(size, cap)
        self._warned_multi_image = False
        # images of the next batches are prepared on this many threads while the model runs (0: inline)
        self.image_workers = default_workers(self._device, self._world_size) if image_workers is None else image_workers
        self.journal = journal  # folder | auto (<--output_path>/visualrwkv_journal) | off
        self._pretrained, self._model_key = pretrained, None

    def _auto_batch_size(self) -> int:
        """As many sequences as 70% of the free memory holds (the model's own estimate per sequence)."""
        if self._device.type == "cuda":
            free = torch.cuda.mem_get_info(self._device)[0]
        else:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        size = max(1, int(0.7 * free) // self.model.bytes_per_sequence())
        logger.info(f"batch_size auto: room for {size} sequences in {free / 2**30:.1f} GiB free memory")
        return size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def clean(self) -> None:
        """Keep the weights: one instance serves several simple_evaluate calls (lmms.clean deletes them)."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ---- requests -> model inputs ---------------------------------------------------------------------
    def _image(self, doc_to_visual, doc_id: int, task: str, split: str) -> tuple:
        """The request's image (VisualRWKV-6: the first; a family that takes several, VisualRWKV-7: a list of
        all of them when there are several), or the reason it has none usable."""
        try:
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        except Exception as e:  # an undecodable image must cost this sample only
            return None, f"{type(e).__name__}: {e}"
        visuals = [v for v in (visuals or []) if v is not None]
        if not visuals:
            return None, None
        limit = self.model.max_images
        if limit is not None and len(visuals) > limit:
            if not self._warned_multi_image:
                what = "one and uses the first" if limit == 1 else f"{limit} and uses the first {limit}"
                logger.warning(f"{task}: requests carry {len(visuals)} images; this VisualRWKV takes {what}")
                self._warned_multi_image = True
            visuals = visuals[:limit]
        for v in visuals:
            if not isinstance(v, Image.Image):
                return None, f"expected a PIL image, got {type(v).__name__}"
        return (visuals if len(visuals) > 1 else visuals[0]), None

    def _generation_request(self, context: str, gen_kwargs: dict, image, task: str, split: str, doc_id: int):
        """The model's request for one document; a bad generation argument raises SettingError naming it."""
        return GenerationRequest(
            context,
            image,
            **generation_settings(gen_kwargs, self.max_new_tokens, task),
            seed=zlib.crc32(f"{task}/{split}/{doc_id}".encode()),  # sampling never depends on the batch
            label=f"{task} doc {doc_id}",  # named in the model's errors (non-finite logits)
        )

    def _check_setup(self, requests: list[Instance]) -> None:
        """Refuse, before any answer, requests that the set-up cannot serve: every document would fail alike
        (and be scored as an empty answer), so this is one error for the run, not one warning per document.
        Checked: every distinct gen_kwargs, and images sent to a text-only checkpoint."""
        seen = set()
        for req in requests:
            if req.request_type.startswith("generate_until") and id(req.args[1]) not in seen:
                seen.add(id(req.args[1]))
                generation_settings(req.args[1], self.max_new_tokens, req.args[-2])
        if self.model.vision is not None:
            return
        for req in requests:
            doc_id, task, split = req.args[-3:]
            try:
                visuals = req.args[2](self.task_dict[task][split][doc_id])
            except Exception:  # a document that cannot be read is that document's problem, reported later
                continue
            if any(v is not None for v in visuals or []):
                raise SetupError(
                    f"{task} doc {doc_id} sends an image, but pretrained={self.model.checkpoint_path} is a text-only RWKV "
                    "checkpoint (no proj.*, no vision tower): evaluate a VisualRWKV checkpoint on image tasks"
                )

    def _run(self, fn, items: list):
        """fn(items) in one batch; on out-of-memory, in halves (answers do not depend on the batch)."""
        try:
            return fn(items)
        except torch.OutOfMemoryError:
            if len(items) == 1:
                raise
            torch.cuda.empty_cache()
            logger.warning(f"out of memory on a batch of {len(items)}: retrying in halves")
            half = len(items) // 2
            return self._run(fn, items[:half]) + self._run(fn, items[half:])

    def _batches(self, order: list[int]):
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]

    def _prepare(self, doc_to_visual, doc_id: int, task: str, split: str) -> Prepared:
        """The request's image as pixels (runs on an image worker): decoded and preprocessed, nothing else kept."""
        image, error = self._image(doc_to_visual, doc_id, task, split)
        if error or image is None:
            return Prepared(None, error)
        try:
            return Prepared(self.model.preprocess(image if isinstance(image, list) else [image]))
        except Exception as e:  # a broken image must cost this sample only
            return Prepared(None, f"{type(e).__name__}: {e}")

    # ---- resume --------------------------------------------------------------------------------------
    def _journal_folder(self, requests: list[Instance]) -> Path | None:
        if self.journal is False or str(self.journal).lower() in JOURNAL_OFF:
            return None
        if str(self.journal) != "auto":
            return Path(self.journal)
        output = output_path_of(requests[0].args[2]) if requests else None
        return None if output is None else Path(output) / "visualrwkv_journal"

    def _job(self, request: Instance, pixels=None) -> GenerationRequest:
        """The model's request for a generate_until Instance, made when needed (never kept for all requests)."""
        context, gen_kwargs, _, doc_id, task, split = request.args
        job = self._generation_request(context, gen_kwargs, None, task, split, doc_id)
        return job if pixels is None else replace(job, pixels=pixels)

    def _plan(self, requests: list[Instance], folder: Path | None) -> tuple[list, list[tuple[int, int]]]:
        """(journal key per request, or None without a journal; sort key per request: long generations first),
        from one GenerationRequest per request, made and dropped here (the batch makes its own, with pixels)."""
        keys, lengths = [], []
        if folder is not None and self._model_key is None:
            self._model_key = model_key(self.model, self._pretrained, folder / "fingerprints.json")
        for req in requests:
            context, gen_kwargs, _, doc_id, task, split = req.args
            job = self._job(req)
            lengths.append((-job.max_new_tokens, -len(job.context)))
            if folder is None:
                keys.append(None)
                continue
            fields = {"type": "generate_until", "task": task, "split": split, "doc_id": doc_id, "context": context,
                      "gen_kwargs": gen_kwargs, "data": dataset_fingerprint(self.task_dict, task, split),
                      "request": [job.max_new_tokens, job.until, job.temperature, job.top_p, job.seed]}  # fmt: skip
            keys.append(request_key(self._model_key, fields))
        return keys, lengths

    def _resume(self, requests: list[Instance], results: list) -> tuple:
        """(journal or None, key per request, sort key per request, indices still to compute); fills `results`
        from the journal."""
        folder = self._journal_folder(requests)
        keys, lengths = self._plan(requests, folder)
        if folder is None:
            return None, keys, lengths, list(range(len(requests)))
        journal = Journal(folder, self.rank)
        found = journal.load(set(keys))
        todo = []
        for i, key in enumerate(keys):
            if (entry := found.get(key)) is None:
                todo.append(i)
            else:
                results[i] = GenerationResult(entry.text, TokenCounts(entry.prompt_tokens, entry.new_tokens))
        served = len(requests) - len(todo)
        logger.info(f"journal {folder}: {served} of {len(requests)} answers served from it, {len(todo)} to compute")
        return journal, keys, lengths, todo

    # ---- lmms-eval entry points -----------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        self._check_setup(requests)
        # Text only here: a request becomes an image on a worker just before its batch runs
        results: list[GenerationResult] = [GenerationResult("", TokenCounts(0, 0)) for _ in requests]
        journal, keys, lengths, todo = self._resume(requests, results)
        # Long generations first, so that an out-of-memory batch shows up at once
        order = sorted(todo, key=lengths.__getitem__)
        memory = rss_anon_mib()
        prefetch = Prefetcher(lambda i: self._prepare(*requests[i].args[2:]), self.image_workers)
        throughput, start = Throughput(self._device), time.perf_counter()
        try:
            with tqdm(total=len(requests), disable=self.rank != 0, desc="VisualRWKV") as bar:
                bar.update(len(requests) - len(todo))
                for batch, prepared in prefetch.run(self._batches(order)):
                    done = self._generate(batch, prepared, requests, results, throughput)
                    if journal is not None:
                        journal.append(
                            [(keys[i], entry, f"{requests[i].args[4]}/{requests[i].args[3]}") for i, entry in done]
                        )
                    bar.update(len(batch))
        finally:
            if journal is not None:
                journal.close()
        throughput.report()
        seconds = time.perf_counter() - start
        logger.info(
            f"VisualRWKV: {len(todo)} answers in {seconds:.2f} s ({len(todo) / max(seconds, 1e-9):.2f} samples/s, "
            f"image_workers={self.image_workers}); {len(requests) - len(todo)} served by the journal; "
            f"RssAnon {memory} MiB before the loop, {rss_anon_mib()} MiB after"
        )
        return results

    def _generate(self, batch, prepared, requests, results, throughput) -> list[tuple[int, Entry]]:
        """Run one batch; returns the (request index, answer) pairs that were computed."""
        ok, inputs = [], []
        for i, p in zip(batch, prepared):
            if p.error:
                self._warn_unusable(requests[i], p.error)
            else:
                ok.append(i)
                inputs.append(self._job(requests[i], p.pixels))
        stats = BatchStats()
        gens = self._run(lambda b: generate_batch(self.model, b, stats=stats), inputs) if inputs else []
        done = []
        for i, gen in zip(ok, gens):
            if gen.error:
                self._warn_unusable(requests[i], gen.error)
                continue
            text = gen.text.translate(CONTROL)
            results[i] = GenerationResult(text, TokenCounts(gen.prompt_tokens, len(gen.new_tokens)))
            done.append((i, Entry(text, gen.prompt_tokens, len(gen.new_tokens))))
        tasks = [requests[i].args[4] for i in ok]
        throughput.add_batch(tasks, [g.prompt_tokens for g in gens], [len(g.new_tokens) for g in gens], stats)
        return done

    @staticmethod
    def _warn_unusable(request: Instance, error: str) -> None:
        doc_id, task = request.args[3], request.args[4]
        logger.warning(f"{task} doc {doc_id}: image could not be used ({error}); answering with an empty string")

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        self._check_setup(requests)

        def prepare(i: int) -> tuple[str, str, Prepared]:
            context, target, doc_to_visual, doc_id, task, split = requests[i].args
            continuation = target(self.task_dict[task][split][doc_id]) if callable(target) else target
            return context, str(continuation), self._prepare(doc_to_visual, doc_id, task, split)

        out: list[tuple[float, bool]] = []
        batches = list(self._batches(list(range(len(requests)))))
        prefetch = Prefetcher(prepare, self.image_workers)
        for batch, items in tqdm(prefetch.run(batches), total=len(batches), disable=self.rank != 0, desc="VisualRWKV"):
            for i, (_, _, p) in zip(batch, items):
                if p.error:
                    _, _, _, doc_id, task, _ = requests[i].args
                    raise ValueError(f"{task} doc {doc_id}: image could not be used ({p.error})")
            inputs = [(context, continuation, p.pixels) for context, continuation, p in items]
            out.extend(self._run(lambda b: loglikelihood_batch(self.model, b), inputs))
        return out

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Rounds follow lmms-eval's protocol (doc_to_text gives each next turn and the end signal); later
        rounds are prefilled on top of the recurrent state, never re-reading the conversation. Batches go
        through the same out-of-memory splitting and throughput report as single-round ones."""
        self._check_setup(requests)
        results: list[list[str]] = [[] for _ in requests]
        throughput = Throughput(self._device)
        for batch in tqdm(list(self._batches(list(range(len(requests))))), disable=self.rank != 0, desc="VisualRWKV"):
            items = [requests[i] for i in batch]
            for j, rounds in zip(batch, self._run(lambda b: self._conversations(b, throughput), items)):
                results[j] = rounds
        throughput.report()
        return results

    def _conversations(self, requests: list[Instance], throughput: Throughput) -> list[list[str]]:
        """The rounds of each multi-round request of one batch."""
        first, docs = [], []
        for req in requests:
            context, gen_kwargs, doc_to_visual, _, doc_id, task, split = req.args
            image, error = self._image(doc_to_visual, doc_id, task, split)
            if error:
                logger.warning(f"{task} doc {doc_id}: image could not be used ({error}); going on without it")
            first.append(self._generation_request(context, gen_kwargs, image, task, split, doc_id))
            docs.append(self.task_dict[task][split][doc_id])
        stats = BatchStats()
        gens, conversation = start_conversation(self.model, first, stats)
        self._count(throughput, requests, gens, stats)
        rounds = [[g.text.translate(CONTROL)] for g in gens]
        info: list = [None] * len(requests)
        final: list[list[str] | None] = [None] * len(requests)
        for round_idx in range(1, MAX_ROUNDS):
            contexts = [""] * len(requests)
            for j, (req, doc) in enumerate(zip(requests, docs)):
                if final[j] is not None:
                    continue
                doc_to_text = req.args[3]
                _, contexts[j], end, result, info[j] = doc_to_text(
                    doc, previous_output=rounds[j], round_idx=round_idx, previous_round_info=info[j]
                )
                if end:
                    final[j] = list(result)
                    conversation.end(j)
            if all(f is not None for f in final):
                break
            nxt = []
            for req, context in zip(requests, contexts):
                _, gen_kwargs, _, _, doc_id, task, split = req.args
                nxt.append(self._generation_request(context or "", gen_kwargs, None, task, split, doc_id))
            stats = BatchStats()
            gens, conversation = continue_batch(self.model, conversation, nxt, stats)
            ongoing = [j for j, f in enumerate(final) if f is None]
            self._count(throughput, [requests[j] for j in ongoing], [gens[j] for j in ongoing], stats, False)
            for j in ongoing:
                rounds[j].append(gens[j].text.translate(CONTROL))
        return [f if f is not None else r for f, r in zip(final, rounds)]

    @staticmethod
    def _count(throughput: Throughput, requests: list[Instance], gens, stats: BatchStats, first: bool = True) -> None:
        tasks = [req.args[5] for req in requests]
        prompt_rows, new_tokens = [g.prompt_tokens for g in gens], [len(g.new_tokens) for g in gens]
        throughput.add_batch(tasks, prompt_rows, new_tokens, stats, new_samples=first)
