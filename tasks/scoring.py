"""Task functions that lmms-eval's YAMLs point to (`!function visualrwkv_eval.tasks.scoring.<name>`): the
paper protocol where it differs from lmms-eval's defaults, and MMBench scoring that needs no OpenAI API."""

from __future__ import annotations

import json
import re

import datasets

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")  # fmt: skip


def pope_llava_answer(pred: str) -> str:
    """LLaVA's eval_pope.py parse: the text before the first '.', 'no' if any word is No / no / not."""
    words = pred.split(".")[0].replace(",", "").split(" ")
    return "no" if any(w in ("No", "no", "not") for w in words) else "yes"


def pope_llava_process_results(doc: dict, results: list[str]) -> dict:
    from lmms_eval.tasks.pope.utils import pope_process_results

    return pope_process_results(doc, [pope_llava_answer(results[0])])


def mme_perception_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    return dataset.filter(lambda doc: doc["category"] in MME_PERCEPTION)


def sqa_reference_answer(pred: str, n_choices: int) -> str | None:
    """The reference eval/eval_science_qa.py parse: a bare letter A-E, "X. ...", or exactly one
    "The answer is X." (regex as written there); None where it reports FAILED or the letter is past the
    last choice."""
    options = "ABCDE"
    if pred in options:
        letter = pred
    elif len(pred) >= 3 and pred[0] in options and pred[1:3] == ". ":
        letter = pred[0]
    else:
        found = re.findall(r"The answer is ([A-Z]).", pred)
        letter = found[0] if len(found) == 1 else None
    return letter if letter is not None and letter in options[:n_choices] else None


def sqa_reference_process_results(doc: dict, results: list[str]) -> dict:
    """ScienceQA-IMG accuracy as the reference scores it (lmms-eval's parser also takes "a" or "B." but not
    "The answer is B.")."""
    letter = sqa_reference_answer(results[0].strip(), len(doc["choices"]))
    return {"exact_match": float(letter is not None and "ABCDE".index(letter) == doc["answer"])}


def gqa_v7_reference_process_results(doc: dict, results: list[str]) -> dict:
    """GQA as VisualRWKV-7 scores it (howard-hou/VisualRWKV, VisualRWKV-v7/v7.00/eval/convert_gqa_for_eval.py
    then eval/eval_gqa.py): the answer with trailing dots removed and lower-cased must equal the gold answer."""
    return {"exact_match": float(results[0].rstrip(".").lower() == doc["answer"])}


def _mmbench_static(results: list[dict], args, name: str) -> float:
    """lmms-eval's MMBench CircularEval with its static (regex) answer extraction instead of GPT matching."""
    from lmms_eval.tasks._task_utils.file_utils import generate_submission_file
    from lmms_eval.tasks.mmbench.mmbench_evals import MMBench_Evaluator

    overall, category, l2_category = MMBench_Evaluator().eval_result(results, eval_method="static")
    with open(generate_submission_file(f"{name}_static_results.json", args), "w") as f:
        json.dump({"overall_acc": overall, "category_acc": category, "l2_category_acc": l2_category}, f)
    return overall * 100


def mmbench_en_static(results: list[dict], args) -> float:
    return _mmbench_static(results, args, "mmbench_en_dev")


def mmbench_cn_static(results: list[dict], args) -> float:
    return _mmbench_static(results, args, "mmbench_cn_dev")
