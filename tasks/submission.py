"""The VQAv2 test-dev submission file as the reference uploads it to the VQA Challenge on EvalAI.

The reference (`VisualRWKV-v6/v6.0/eval/convert_vqav2_for_submission.py`, as LLaVA's
`scripts/convert_vqav2_for_submission.py`) passes every answer through `EvalAIAnswerProcessor` and writes one
entry for every test2015 question id, "" for those it did not answer (the test-dev questions are a subset of
test2015). lmms-eval's `vqav2_test` normalises nothing when the answers are None, as they are on the test
split, and the official VQA evaluation normalises a prediction only when the ten human answers disagree: "Yes"
against ten "yes" scores 0.

The test2015 question ids come, in this order, from:
1. the file or folder named by the environment variable VISUALRWKV_VQAV2_TEST_QUESTIONS: the official
   `v2_OpenEnded_mscoco_test2015_questions.json`, LLaVA's `llava_vqav2_mscoco_test2015.jsonl`, or parquet
   files of the hub's `test` split (only their `question_id` column is read);
2. the `test` split of the hub data set lmms-eval loaded for the task (`lmms-lab-encoder/VQAv2`, from the
   datasets cache; only the `question_id` column is read, no image is decoded).
Without either, the file holds the answered questions only and an error says how to supply the ids.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from loguru import logger

TEST_QUESTIONS_ENV = "VISUALRWKV_VQAV2_TEST_QUESTIONS"
HUB_DATASET = "lmms-lab-encoder/VQAv2"  # dataset_path of lmms-eval's vqav2 YAMLs


def vqav2_normalised_process_results(doc: dict, results: list[str]) -> dict:
    """The answer as EvalAIAnswerProcessor writes it ("Yes." -> "yes", "Two" -> "2", "A dog" -> "dog")."""
    from lmms_eval.tasks._task_utils.vqa_eval_metric import EvalAIAnswerProcessor

    return {"submission": {"question_id": int(doc["question_id"]), "answer": EvalAIAnswerProcessor()(results[0])}}


def _ids_from_parquet(path: Path) -> list[int]:
    import pyarrow.parquet as pq

    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    return [int(q) for f in files for q in pq.read_table(f, columns=["question_id"]).column(0).to_pylist()]


def read_question_ids(path: str | Path) -> list[int]:
    """Question ids from the official question JSON, a LLaVA question jsonl, or parquet file(s)."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".parquet":
        return _ids_from_parquet(path)
    if path.suffix == ".jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [int(json.loads(line)["question_id"]) for line in lines if line.strip()]
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = data["questions"] if isinstance(data, dict) else data
    return [int(r["question_id"]) if isinstance(r, dict) else int(r) for r in rows]


def _ids_from_hub() -> list[int]:
    """The cached hub test split's question_id column (lmms-eval downloaded every split with testdev)."""
    import datasets
    from lmms_eval.api.task import _resolve_hf_datasets_cache_dir

    # local_files_only: a run on a local copy must not start a download of 447,793 test images here
    test = datasets.load_dataset(HUB_DATASET, split="test", cache_dir=_resolve_hf_datasets_cache_dir(),
                                 download_config=datasets.DownloadConfig(local_files_only=True))  # fmt: skip
    return [int(q) for q in test.data.column("question_id").to_pylist()]  # arrow column: no image decoded


def test2015_question_ids() -> list[int] | None:
    source = os.environ.get(TEST_QUESTIONS_ENV)
    try:
        return read_question_ids(source) if source else _ids_from_hub()
    except Exception as e:  # the answers must still be written
        logger.error(f"VQAv2 test2015 question ids unavailable ({type(e).__name__}: {e}); set {TEST_QUESTIONS_ENV}")
        return None


def complete_submission(answers: list[dict], test_ids: list[int] | None) -> list[dict]:
    """One entry per test2015 id in the question file's order, "" where unanswered (convert_vqav2_for_submission.py)."""
    answered = {int(a["question_id"]): a["answer"] for a in answers}
    if test_ids is None:
        return [{"question_id": q, "answer": a} for q, a in answered.items()]
    extra = set(answered) - set(test_ids)
    if extra:
        logger.error(f"{len(extra)} answered question ids are not test2015 ids (e.g. {min(extra)}); kept at the end")
    rows = [{"question_id": q, "answer": answered.get(q, "")} for q in test_ids]
    return rows + [{"question_id": q, "answer": answered[q]} for q in sorted(extra)]


def vqav2_testdev_submission(results: list[dict], args=None) -> None:
    """Writes <output_path>/submissions/vqav2-test-submission-<time>.json, the name lmms-eval's vqav2_test uses."""
    from lmms_eval.tasks._task_utils.file_utils import generate_submission_file

    test_ids = test2015_question_ids()
    rows = complete_submission(results, test_ids)
    if test_ids is None:
        logger.error("the VQA Challenge expects every test2015 question id: this file holds the answered ones only")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
    path = generate_submission_file(f"vqav2-test-submission-{stamp}.json", args)
    with open(path, "w") as f:
        json.dump(rows, f)
    unanswered = sum(r["answer"] == "" for r in rows)
    logger.info(f"VQAv2 submission: {path} ({len(rows)} questions, {len(results)} answered, {unanswered} empty)")
