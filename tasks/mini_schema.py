"""Column names and types of the hub data sets behind the eight lmms-eval tasks (the lmms-lab
data sets named by `dataset_path` in lmms-eval's task YAMLs, as their data set cards list them), so that
the mini benchmarks go through exactly the code paths the real data takes."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, Features, Image, List, Value


def _s() -> Value:
    return Value("string")


VQAV2 = Features({
    "question_type": _s(), "multiple_choice_answer": _s(),
    "answers": List({"answer": _s(), "answer_confidence": _s(), "answer_id": Value("int64")}),
    "image_id": Value("int64"), "answer_type": _s(), "question_id": Value("int64"), "question": _s(), "image": Image(),
})  # fmt: skip
GQA = Features({
    "id": _s(), "imageId": _s(), "question": _s(), "answer": _s(), "fullAnswer": _s(), "isBalanced": Value("bool"),
    "groups": {"global": _s(), "local": _s()}, "entailed": List(_s()), "equivalent": List(_s()),
    "types": {"structural": _s(), "semantic": _s(), "detailed": _s()},
    "annotations": {"answer": _s(), "question": _s(), "fullAnswer": _s()},
    "semantic": List({"operation": _s(), "argument": _s(), "dependencies": List(Value("int32"))}),
    "semanticStr": _s(), "image": Image(),
})  # fmt: skip
SCIENCEQA = Features({
    "image": Image(), "question": _s(), "choices": List(_s()), "answer": Value("int8"), "hint": _s(), "task": _s(),
    "grade": _s(), "subject": _s(), "topic": _s(), "category": _s(), "skill": _s(), "lecture": _s(), "solution": _s(),
})  # fmt: skip
TEXTVQA = Features({
    "image_id": _s(), "question_id": Value("int32"), "question": _s(), "question_tokens": List(_s()), "image": Image(),
    "image_width": Value("int32"), "image_height": Value("int32"), "flickr_original_url": _s(),
    "flickr_300k_url": _s(), "answers": List(_s()), "image_classes": List(_s()), "set_name": _s(),
    "ocr_tokens": List(_s()),
})  # fmt: skip
POPE = Features({
    "id": _s(), "question_id": _s(), "question": _s(), "answer": _s(), "image_source": _s(), "image": Image(),
    "category": _s(),
})  # fmt: skip
MMBENCH = Features({
    "index": Value("int64"), "question": _s(), "hint": _s(), "answer": _s(), "A": _s(), "B": _s(), "C": _s(),
    "D": _s(), "category": _s(), "image": Image(), "source": _s(), "L2-category": _s(), "comment": _s(),
    "split": _s(),
})  # fmt: skip
MME = Features({"question_id": _s(), "image": Image(), "question": _s(), "answer": _s(), "category": _s()})

SCHEMAS = {
    "vqav2": VQAV2, "gqa": GQA, "scienceqa_img": SCIENCEQA, "textvqa": TEXTVQA, "pope": POPE,
    "mmbench": MMBENCH, "mme": MME,
}  # fmt: skip


def schema_for(name: str) -> Features:
    """The features of a mini data set named `<benchmark>_<split>`."""
    return next(f for prefix, f in SCHEMAS.items() if name.startswith(prefix))


def to_parquet(name: str, rows: list[dict], path: Path) -> None:
    # Written at run time by the installed `datasets`, so that its own version can read it back
    Dataset.from_list(rows, features=schema_for(name)).to_parquet(str(path))
