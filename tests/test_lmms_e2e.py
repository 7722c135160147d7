"""End to end through lmms-eval: the real CLI on every mini task, the standard task names on local data,
and the paper-protocol variants. lmms-eval's CLI exits 0 on failure, so these assert on the files it writes."""

import json
import subprocess
import sys

import pytest
import yaml

from visualrwkv_eval.cli import lmms_eval_command, offline_env, results_file

# every test runs lmms-eval's CLI or evaluator over several tasks (the module fixture: six CLI runs)
pytestmark = pytest.mark.slow

METRICS = {
    "vqav2_val": ["exact_match,none"],
    "vqav2_test": ["submission,none"],
    "gqa": ["exact_match,none"],
    "scienceqa_img": ["exact_match,none"],
    "textvqa_val": ["exact_match,none", "submission,none"],
    "pope": [
        "pope_accuracy,none",
        "pope_precision,none",
        "pope_recall,none",
        "pope_f1_score,none",
        "pope_yes_ratio,none",
    ],
    "mmbench_en_dev": ["gpt_eval_score,none", "submission,none"],
    "mmbench_en_test": ["submission,none"],
    "mmbench_cn_dev": ["gpt_eval_score,none", "submission,none"],
    "mmbench_cn_test": ["submission,none"],
    "mme": ["mme_perception_score,none", "mme_cognition_score,none"],
}
DATA = {  # mini data file of each task
    "vqav2_val": "vqav2_validation", "vqav2_test": "vqav2_test", "gqa": "gqa_testdev",
    "scienceqa_img": "scienceqa_img_test", "textvqa_val": "textvqa_validation", "pope": "pope_test",
    "mmbench_en_dev": "mmbench_en_dev", "mmbench_en_test": "mmbench_en_test", "mmbench_cn_dev": "mmbench_cn_dev",
    "mmbench_cn_test": "mmbench_cn_test", "mme": "mme_test",
}  # fmt: skip


def rows(demo_dir, name):
    import pyarrow.parquet as pq

    return pq.read_metadata(demo_dir / "data" / f"{name}.parquet").num_rows


def run_cli(demo_dir, out, tasks, *extra, batch_size=8, launcher=(sys.executable,)):
    tiny = demo_dir / "tiny"
    cmd = lmms_eval_command(tiny / "model.pth", tiny / "vision_tower", tasks, out, "--batch_size", str(batch_size),
                            "--log_samples", "--verbosity", "DEBUG", *extra, model_args=",dtype=float32",
                            launcher=launcher)  # fmt: skip
    proc = subprocess.run(cmd, env=offline_env(demo_dir), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    path = results_file(out)
    samples = {}
    for f in path.parent.glob(f"{path.name.split('_results')[0]}_samples_*.jsonl"):
        samples[f.stem.split("_samples_")[1]] = [json.loads(line) for line in f.read_text().splitlines()]
    return json.loads(path.read_text()), samples, out


TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")


@pytest.fixture(scope="module")
def mini_runs(demo_dir, tmp_path_factory):
    """The mini group through the CLI: twice at batch 8, then at batch 1, 3 and 32, then on 2 CPU processes."""
    tasks = str(demo_dir / "tasks")
    settings = [{}, {}, {"batch_size": 1}, {"batch_size": 3}, {"batch_size": 32}, {"launcher": TORCHRUN}]
    return [run_cli(demo_dir, tmp_path_factory.mktemp(f"run{i}"), "visualrwkv_mini", "--include_path", tasks, **kw)
            for i, kw in enumerate(settings)]  # fmt: skip


def test_every_mini_task_through_the_cli(mini_runs, demo_dir):
    results, samples, _ = mini_runs[0]
    assert results["config"]["model_backend"] == "visualrwkv_eval.lmms_model.VisualRWKVLmms (simple)"
    for task, metrics in METRICS.items():
        name = f"visualrwkv_mini_{task}"
        assert set(metrics) <= set(results["results"][name]), (name, results["results"][name])
        n = rows(demo_dir, DATA[task])
        assert n >= 20
        assert results["n-samples"][name] == {"original": n, "effective": n}
        assert len(samples[name]) == n
        assert all(s["token_counts"][0]["input_tokens"] > 0 for s in samples[name])


def test_submission_files_are_written(mini_runs, demo_dir):
    folder = mini_runs[0][2] / "submissions"
    names = {p.name for p in folder.iterdir()}
    assert {"mmbench_en_test_results.xlsx", "mmbench_cn_test_results.xlsx", "mmbench_en_dev_results.xlsx"} <= names
    assert any(n.startswith("vqav2-test-submission-") for n in names)
    assert any(n.startswith("textvqa_submission_") for n in names)
    vqa = json.loads(next(folder.glob("vqav2-test-submission-*.json")).read_text())
    assert len(vqa) == rows(demo_dir, "vqav2_test") and set(vqa[0]) == {"question_id", "answer"}


def metrics(results):
    return {t: {k: v for k, v in m.items() if "stderr" not in k} for t, m in results["results"].items()}


def answers(samples):
    return {task: sorted((s["doc_id"], s["filtered_resps"]) for s in rows) for task, rows in samples.items()}


def test_two_runs_are_identical(mini_runs):
    (r1, s1, _), (r2, s2, _) = mini_runs[:2]
    assert metrics(r1) == metrics(r2)
    assert answers(s1) == answers(s2)


@pytest.mark.parametrize(("run", "how"), [(2, "batch 1"), (3, "batch 3"), (4, "batch 32"), (5, "2 processes")])
def test_batch_size_and_process_count_change_no_answer(mini_runs, run, how):
    results, samples, _ = mini_runs[run]
    reference_results, reference_samples, _ = mini_runs[0]
    assert answers(samples) == answers(reference_samples), how
    assert metrics(results) == metrics(reference_results), how
    assert results["n-samples"] == reference_results["n-samples"]


def test_standard_task_names_on_a_local_copy(demo_dir, tmp_path):
    """The README's recipe: a directory of override YAMLs keeps lmms-eval's own task names."""
    overrides = tmp_path / "overrides"
    overrides.mkdir()
    for task, split in (("mme", "test"), ("gqa", "testdev")):
        cfg = {"task": task, "dataset_path": "parquet", "dataset_name": None,
               "dataset_kwargs": {"data_files": {split: str(demo_dir / "data" / f"{DATA[task]}.parquet")}}}  # fmt: skip
        if task == "gqa":
            cfg["process_docs"] = None
        (overrides / f"{task}.yaml").write_text(yaml.safe_dump(cfg))
    results, samples, _ = run_cli(demo_dir, tmp_path / "out", str(overrides))
    assert set(METRICS["mme"]) <= set(results["results"]["mme"])
    assert "exact_match,none" in results["results"]["gqa"]
    assert samples["mme"][0]["input"].endswith("\nAnswer the question using a single word or phrase.")


def override(demo_dir, task, split, data):
    return {"task": task, "dataset_path": "parquet", "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(demo_dir / "data" / f"{data}.parquet")}}}  # fmt: skip


def test_paper_protocol_variants(demo_dir, lmms_model, tmp_path, monkeypatch):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    monkeypatch.chdir(tmp_path)  # submission files of the Python API land in ./submissions
    monkeypatch.setenv("VISUALRWKV_VQAV2_TEST_QUESTIONS", str(demo_dir / "data" / "vqav2_test.parquet"))
    manager = TaskManager(include_path=str(demo_dir / "tasks"), model_name="visualrwkv")
    assert {"visualrwkv_paper", "visualrwkv_paper_pope", "visualrwkv_mini"} <= set(manager.all_groups)
    tasks = [
        override(demo_dir, "visualrwkv_paper_textvqa_val", "validation", "textvqa_validation"),
        override(demo_dir, "visualrwkv_paper_mme", "test", "mme_test"),
        override(demo_dir, "visualrwkv_paper_mmbench_en_dev", "dev", "mmbench_en_dev"),
        override(demo_dir, "visualrwkv_paper_mmbench_cn_dev", "dev", "mmbench_cn_dev"),
        override(demo_dir, "visualrwkv_paper_vqav2_testdev", "testdev", "vqav2_test"),
        {**override(demo_dir, "visualrwkv_paper_gqa", "testdev", "gqa_testdev"), "process_docs": None},
        override(demo_dir, "visualrwkv_paper_scienceqa_img", "test", "scienceqa_img_test"),
        *(override(demo_dir, f"visualrwkv_paper_pope_{s}", split, f"pope_{split}")
          for s, split in (("adv", "adversarial"), ("pop", "popular"), ("random", "random"))),
    ]  # fmt: skip
    out = simple_evaluate(model=lmms_model, tasks=tasks, task_manager=manager, process_docs_parallel=1)
    res, samples = out["results"], out["samples"]
    context = lambda sample: sample["arguments"][0]  # noqa: E731
    ocr = context(samples["visualrwkv_paper_textvqa_val"][0])
    assert "\nReference OCR token: " in ocr and ocr.endswith("\nAnswer the question using a single word or phrase.")
    assert set(res["visualrwkv_paper_mme"]) >= {"mme_perception_score,none"}
    assert "mme_cognition_score,none" not in res["visualrwkv_paper_mme"]
    assert len(samples["visualrwkv_paper_mme"]) == 20  # the perception pairs of the mini MME only
    for lang, suffix in (
        ("en", "Answer with the option's letter from the given choices directly."),
        ("cn", "请直接回答选项字母。"),
    ):
        for sample in samples[f"visualrwkv_paper_mmbench_{lang}_dev"]:
            doc = sample["doc"]
            options = "".join(f"\n{x}. {doc[x]}" for x in "ABCD" if doc[x] is not None)
            hint = f"{doc['hint']}\n" if doc["hint"] else ""
            assert context(sample) == f"{hint}{doc['question']}{options}\n{suffix}"  # evaluate.py's prompt
    for s in ("adv", "pop", "random"):
        assert "pope_f1_score,none" in res[f"visualrwkv_paper_pope_{s}"]
        for sample in samples[f"visualrwkv_paper_pope_{s}"]:
            assert sample["pope_accuracy"]["prediction"] in ("yes", "no")  # LLaVA parsing maps every answer
    (vqa,) = (tmp_path / "submissions").glob("vqav2-test-submission-*.json")
    assert len(json.loads(vqa.read_text())) == rows(demo_dir, "vqav2_test")  # every test2015 id of the mini split
    assert "exact_match,none" in res["visualrwkv_paper_gqa"]
    assert "exact_match,none" in res["visualrwkv_paper_scienceqa_img"]
    for sample in samples["visualrwkv_paper_scienceqa_img"]:  # LLaVA's question text, no instruction suffix
        assert context(sample).split("\n")[-1][:3] in ("B. ", "C. ", "D. "), context(sample)  # ends at the last choice
