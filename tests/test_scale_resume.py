"""Full-size behaviour through the real lmms-eval CLI: memory independent of the number of rows, answers
independent of the image workers and of the journal, and a run killed with SIGKILL resumed from its journal."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from visualrwkv_eval.bench.scale import lmms_eval_command, run_lmms_eval, write_dataset, write_task
from visualrwkv_eval.cli import offline_env, results_file
from visualrwkv_eval.journal import Journal

pytestmark = pytest.mark.slow
GEN = ("--gen_kwargs", "max_new_tokens=3", "--batch_size", "8", "--log_samples")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from visualrwkv_eval.model.tiny import make_tiny

    work = tmp_path_factory.mktemp("scale")
    make_tiny(work / "tiny", seed=0)
    make_tiny(work / "other", seed=1)
    tasks = work / "tasks"
    write_task(tasks, "visualrwkv_scale_rss", write_dataset(work / "rss.parquet", 800, 100, (640, 480)))
    write_task(tasks, "visualrwkv_scale_kill", write_dataset(work / "kill.parquet", 240, 240, (96, 72), seed=1))
    return work


def cli(work, task, out, model_args="", *extra):
    return lmms_eval_command(work / "tiny", work / "tasks", task, out, model_args, *GEN, *extra)


def samples(out):
    """{doc_id: sample line} of the run's samples file (one task per run here)."""
    path = results_file(out)
    (found,) = path.parent.glob(f"{path.name.split('_results')[0]}_samples_*.jsonl")
    return {s["doc_id"]: s for s in map(json.loads, found.read_text().splitlines())}


def answers(rows):
    return {d: (s["filtered_resps"], s["token_counts"]) for d, s in rows.items()}


def env_for(work):
    # one torch thread: on a busy 2-core runner OpenMP threads that spin for each other cost 4-8x
    return {**offline_env(work), "OMP_NUM_THREADS": "1"}


def test_memory_flat_in_rows_and_answers_independent_of_workers_and_journal(work):
    env, runs = env_for(work), {}
    for name, rows, args in (("100", 100, ",image_workers=2"), ("800", 800, ",image_workers=2"),
                             ("inline", 100, ",image_workers=0,journal=off")):  # fmt: skip
        out = work / f"rss_{name}"
        memory = run_lmms_eval(
            cli(work, "visualrwkv_scale_rss", out, args, "--limit", str(rows)), env, work / f"{name}.log"
        )
        runs[name] = memory, samples(out)
    (small, s100), (large, s800), (_, inline) = runs["100"], runs["800"], runs["inline"]
    assert len(s100) == 100 and len(s800) == 800
    print(f"peak memory at 100 rows: {small}; at 800 rows: {large}")  # shown with pytest -s
    # 8x the rows (700 more 640x480 JPEGs decoded): the high-water mark stays put
    # (RssAnon: the process's own memory; VmHWM adds pages of memory-mapped files such as the Arrow cache)
    assert large["peak_rssanon_mib"] - small["peak_rssanon_mib"] < 150, (small, large)
    assert answers(inline) == answers(s100)  # 0 vs 2 workers, without vs with the journal
    assert answers({d: s800[d] for d in s100}) == answers(s100)
    assert len({s["filtered_resps"][0] for s in s100.values()}) > 1  # the model does answer differently


def journal_lines(folder):
    """Intact journal entries (what a rerun can serve)."""
    return len(Journal(folder).load({json.loads(line)["key"] for line in _lines(folder)}))


def _lines(folder):
    for path in folder.glob("*.jsonl"):
        for line in path.read_text().splitlines(keepends=True):
            try:
                json.loads(line)
                yield line
            except ValueError:
                pass


def served(log):
    line = next(x for x in log.splitlines() if "answers served from it" in x)
    return int(line.split("journal ")[1].split(": ")[1].split(" of ")[0])


def run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_sigkill_mid_run_resumes_from_the_journal(work):
    env, out = env_for(work), work / "killed"
    folder = out / "visualrwkv_journal"
    cmd = cli(work, "visualrwkv_scale_kill", out)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while (not folder.is_dir() or sum(1 for _ in _lines(folder)) < 40) and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(out.glob("*/*_results.json")), "killed too late: the run had finished"
    kept = journal_lines(folder)
    assert 40 <= kept < 240

    resumed = run(cmd, env)
    assert served(resumed) == kept  # every finished answer came from the journal
    reference = work / "uninterrupted"
    run(cli(work, "visualrwkv_scale_kill", reference, ",journal=off"), env)
    first, again = samples(reference), samples(out)
    assert len(again) == 240 and again == first  # the whole samples file, token counts included

    # Another model under the same path (same size, same inode): nothing may be reused
    ckpt = work / "tiny" / "model.pth"
    shutil.copyfile(ckpt, work / "seed0.pth")
    shutil.copyfile(work / "other" / "model.pth", ckpt)
    try:
        rerun = run(cmd, env)
    finally:
        shutil.copyfile(work / "seed0.pth", ckpt)
    assert served(rerun) == 0
    assert answers(samples(out)) != answers(first)
