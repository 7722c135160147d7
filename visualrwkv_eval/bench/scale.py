"""bench scale: samples/s and peak memory against the number of rows, through the real lmms-eval CLI, on
synthetic data sets with the real benchmarks' sizes (rows / distinct images) and camera-sized JPEGs, with the
image pipeline on (image_workers=N) and off (0).

Memory is sampled from /proc/<pid>/status every 0.1 s: RssAnon (the process's own heap: images, tensors,
Python objects) and RssFile (pages of memory-mapped files; `datasets` maps its Arrow cache, so every image read
adds its bytes there until the kernel needs the memory: page cache, not a leak). The criterion for streaming
is RssAnon; the kernel's high-water mark VmHWM (anon + file) is recorded too.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import random
import re
import subprocess
import threading
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFilter

from .common import environment, figure, save

# Rows / distinct images of the evaluation splits lmms-eval runs (hub data sets behind the task names)
PRESETS = {
    "gqa": (12_578, 398),  # testdev-balanced
    "textvqa": (5_000, 3_166),  # val
    "pope": (9_000, 500),  # test (3 x 3,000 questions on 500 COCO images)
    "mme": (2_374, 1_187),
    "scienceqa_img": (2_017, 2_017),  # test, image questions
    "mmbench": (4_329, 4_329),  # en dev
    "vqav2_testdev": (107_394, 36_807),
}
SHAPES = ("circle", "square", "triangle", "star")
CHUNK = 1_000  # rows per parquet row group
MAX_CACHED = 12_000  # encoded JPEGs kept for reuse while generating (about 40 KB each)


@functools.lru_cache(maxsize=4)
def _layers(size: tuple[int, int]) -> tuple[Image.Image, Image.Image]:
    """A gradient and a sensor-noise layer, made once per size (the costly part of a scene)."""
    gradient = Image.linear_gradient("L").resize(size).convert("RGB")
    noise = Image.effect_noise((size[0] * 2, size[1] * 2), 24).convert("RGB").filter(ImageFilter.SMOOTH)
    return gradient, noise


def _jpeg(rng: random.Random, size: tuple[int, int]) -> bytes:
    """A camera-like scene: tinted gradient, a few shapes, sensor noise; about 35 KB at quality 90."""
    w, h = size
    gradient, noise = _layers(size)
    img = Image.blend(gradient, Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3))), 0.6)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, 8)):
        x, y, r = rng.randrange(w), rng.randrange(h), rng.randint(20, 120)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    dx, dy = rng.randrange(w), rng.randrange(h)  # a different crop of the noise for every image
    img = Image.blend(img, noise.crop((dx, dy, dx + w, dy + h)), 0.15)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_dataset(path: Path, rows: int, distinct: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> Path:
    """A POPE-schema parquet of `rows` questions over `distinct` JPEG images (row i shows image i % distinct)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from visualrwkv_eval.tasks.mini_schema import POPE

    rng = random.Random(seed)
    distinct = max(1, min(distinct, rows))
    schema = POPE.arrow_schema
    images: dict[int, bytes] = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")  # a killed generation never leaves a short file under the real name
    with pq.ParquetWriter(str(partial), schema) as writer:
        for start in range(0, rows, CHUNK):
            cols: dict[str, list] = {name: [] for name in schema.names}
            for i in range(start, min(rows, start + CHUNK)):
                k = i % distinct
                if k not in images:
                    images[k] = _jpeg(random.Random(seed * 1_000_003 + k), size)
                kind = rng.choice(SHAPES)
                row = {"id": str(i), "question_id": str(i + 1), "question": f"Is there a {kind} in the image?",
                       "answer": rng.choice(("yes", "no")), "image_source": f"synthetic_{k:012d}",
                       "image": {"bytes": images[k], "path": None}, "category": ("adversarial", "popular", "random")[i % 3]}  # fmt: skip
                for name in schema.names:
                    cols[name].append(row[name])
            writer.write_table(pa.Table.from_pydict(cols, schema=schema))
            if len(images) > MAX_CACHED:  # a huge data set: regenerate (deterministically) rather than hold
                images.clear()
    os.replace(partial, path)
    return path


def write_task(folder: Path, name: str, data: Path) -> Path:
    """A task YAML that is lmms-eval's own POPE task (prompt, scoring) on the given parquet."""
    from visualrwkv_eval.tasks import lmms_eval_tasks_dir

    folder.mkdir(parents=True, exist_ok=True)
    yaml = (f"include: {lmms_eval_tasks_dir() / 'pope' / 'pope.yaml'}\ntask: {name}\ndataset_path: parquet\n"
            f"dataset_name: null\ndataset_kwargs:\n  data_files:\n    test: {data.resolve()}\n")  # fmt: skip
    path = folder / f"{name}.yaml"
    path.write_text(yaml)
    return path


class MemoryWatch:
    """Peak RssAnon / RssFile / VmHWM of a process, sampled from /proc every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval = pid, interval
        self.peak = {"RssAnon": 0, "RssFile": 0, "VmHWM": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                text = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            for line in text.splitlines():
                key, _, value = line.partition(":")
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(value.split()[0]) * 1024)
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {f"peak_{k.lower()}_mib": v / 2**20 for k, v in self.peak.items()}


def lmms_eval_command(tiny: Path, tasks: Path, task: str, out: Path, model_args: str = "", *extra: str) -> list[str]:
    """The CLI on the tiny model in `tiny` (make-tiny's layout), in fp32, with its errors shown (DEBUG)."""
    from visualrwkv_eval.cli import lmms_eval_command as command

    return command(tiny / "model.pth", tiny / "vision_tower", task, out, "--verbosity", "DEBUG", *extra,
                   include_path=tasks, model_args=f",dtype=float32{model_args}")  # fmt: skip


def run_lmms_eval(cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Run the CLI, watching its memory; returns wall seconds and peaks. Raises with the log's tail on failure."""
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        watch = MemoryWatch(proc.pid)
        code = proc.wait()
    peaks = watch.stop()
    if code != 0:
        raise RuntimeError(f"lmms-eval failed ({code}): {log.read_text()[-3000:]}")
    return {"wall_s": time.perf_counter() - start, **peaks}


RATE = re.compile(r"VisualRWKV: (\d+) answers in ([0-9.]+) s")
LOOP_MEMORY = re.compile(r"RssAnon (\d+) MiB before the loop, (\d+) MiB after")


def _loop_seconds(log: Path) -> tuple[int, float] | None:
    """(answers, seconds) of the adapter's request loop, from its closing log line."""
    found = RATE.findall(log.read_text())
    return (int(found[-1][0]), float(found[-1][1])) if found else None


def _point(cmd: list[str], env: dict[str, str], log: Path, rows: int, workers: int) -> dict:
    measured = run_lmms_eval(cmd, env, log)
    loop = _loop_seconds(log)
    seconds = loop[1] if loop else measured["wall_s"]
    point = {"rows": rows, "image_workers": workers, "loop_s": seconds, "samples_per_s": rows / seconds, **measured}
    if found := LOOP_MEMORY.findall(log.read_text()):  # the adapter's own view: is the request loop flat?
        point["rssanon_mib_before_loop"], point["rssanon_mib_after_loop"] = map(int, found[-1])
    print(json.dumps(point), flush=True)
    return point


def add_arguments(parser: argparse.ArgumentParser) -> None:
    b = parser.add_argument
    b("--preset", default="vqav2_testdev", choices=list(PRESETS), help="data set whose rows / distinct images to mimic")
    b("--rows", default="100,1000", help="comma-separated row counts (lmms-eval --limit)")
    b("--preset-rows", type=int, default=None, help="rows in the generated data (default: max --rows)")
    b("--workers", type=int, default=2, help="image_workers of the pipeline run (vs 0)")
    b("--batch-size", type=int, default=8)
    b("--image-size", default="640x480", help="WxH of the JPEGs")
    b("--max-new-tokens", type=int, default=3, help="answer cap (VQA answers: 1-3 tokens); 0: the task's")
    b("--threads", type=int, default=1, help="torch threads of each lmms-eval run (OMP_NUM_THREADS)")
    b("--inline-max-rows", type=int, default=10**9, help="run image_workers=0 only up to this many rows")
    b("--out", default="bench_results", help="folder for the JSON and PNG")
    b("--work", default=None, help="folder for the data, model and runs (default: OUT/scale_work)")


def run(args: argparse.Namespace) -> None:
    """The tiny model in fp32 on the CPU, through the lmms-eval CLI."""
    from visualrwkv_eval.cli import offline_env
    from visualrwkv_eval.model.tiny import make_tiny

    out = Path(args.out).resolve()
    work = Path(args.work or out / "scale_work").resolve()
    tiny = work / "tiny"
    if not (tiny / "model.pth").is_file():
        make_tiny(tiny, seed=0)
    size = tuple(int(x) for x in args.image_size.split("x"))
    rows = sorted(int(r) for r in args.rows.split(","))
    full, distinct = PRESETS[args.preset]
    n = max(rows) if args.preset_rows is None else args.preset_rows
    data = work / "data" / f"{args.preset}_{n}_{size[0]}x{size[1]}.parquet"
    if not data.is_file():
        start = time.perf_counter()
        write_dataset(data, n, round(distinct * n / full) if n < full else distinct, size)
        print(f"wrote {data} ({data.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - start:.0f} s")
    task = f"visualrwkv_scale_{args.preset}"
    tasks = work / "tasks"
    write_task(tasks, task, data)
    env = {**offline_env(work), "OMP_NUM_THREADS": str(args.threads)}
    points, load = [], [os.getloadavg()]
    gen = ["--gen_kwargs", f"max_new_tokens={args.max_new_tokens}"] if args.max_new_tokens else []
    base = {
        "benchmark": "scale", **environment(torch.device("cpu"), torch.float32), "preset": args.preset,
        "preset_rows_distinct_images": [full, distinct], "rows_in_data": n, "image_size": list(size),
        "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "pipeline_workers": args.workers,
        "cpu_count": os.cpu_count(), "torch_threads_per_run": args.threads,
        "note": "loop_s: the adapter's request loop (images, model, journal); wall_s includes lmms-eval's start-up "
        "and scoring. Other jobs shared the CPU: see the load averages (1, 5, 15 min) taken before each run.",
    }  # fmt: skip
    for r in rows:
        for workers in (0, args.workers) if r <= args.inline_max_rows else (args.workers,):
            run_dir = work / "runs" / f"{r}_w{workers}"
            extra = ["--limit", str(r), "--batch_size", str(args.batch_size), *gen]
            cmd = lmms_eval_command(tiny, tasks, task, run_dir, f",image_workers={workers}", *extra)
            load.append(os.getloadavg())
            points.append(_point(cmd, env, work / f"log_{r}_w{workers}.txt", r, workers))
            path = _write(base, points, load, args, out)  # after every run: a late failure keeps the others
    print(f"wrote {path}")


def _write(base: dict, points: list[dict], load: list, args: argparse.Namespace, out: Path) -> Path:
    speedups = {}
    for r in sorted({p["rows"] for p in points}):
        rate = {p["image_workers"]: p["samples_per_s"] for p in points if p["rows"] == r}
        if 0 in rate and args.workers in rate:
            speedups[str(r)] = rate[args.workers] / rate[0]
    result = {**base, "loadavg_before_runs": load, "points": points, "speedup_pipeline_over_inline": speedups}
    path = save(result, out, f"scale_{args.preset}")
    _plot(result, out / f"scale_{args.preset}.png")
    return path


def _plot(result: dict, path: Path) -> None:
    plt = figure()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for k, workers in enumerate(sorted({p["image_workers"] for p in result["points"]})):
        pts = [p for p in result["points"] if p["image_workers"] == workers]
        label = "inline (image_workers=0)" if workers == 0 else f"pipeline (image_workers={workers})"
        rows, colour = [p["rows"] for p in pts], f"C{k}"
        a.plot(rows, [p["samples_per_s"] for p in pts], "o-", color=colour, label=label)
        b.plot(rows, [p["peak_rssanon_mib"] for p in pts], "o-", color=colour, label=f"RssAnon, {label}")
        b.plot(rows, [p["peak_vmhwm_mib"] for p in pts], "x--", color=colour, label=f"VmHWM (+ mapped files), {label}")
    a.set(xscale="log", xlabel="rows", ylabel="samples/s", title="throughput (request loop)")
    b.set(xscale="log", xlabel="rows", ylabel="MiB", title="peak memory of the lmms-eval process")
    b.set_ylim(0, None)
    for ax in (a, b):
        ax.legend(fontsize=7)
    fig.suptitle(
        f"lmms-eval + VisualRWKV tiny, {result['preset']}-sized synthetic data, {result['device']}", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
