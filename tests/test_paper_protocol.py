"""The paper group (`visualrwkv_paper`) gives the model the reference's prompt, token for token, on all eight
benchmarks.

Each case is a document in the hub data set's schema. lmms-eval builds the request for the paper task, the
adapter's prompt builder (`VisualRWKV.prompt`, what generation calls) turns it into ids, and these are compared
with ids written down here from the reference, never from this project's prompt code:

- the question text is the one the reference's `VisualRWKV-v6/v6.0/evaluate.py` reads: LLaVA-1.5's question
  file `text` (VQAv2, GQA, TextVQA, POPE, MME), the ScienceQA conversation value verbatim, or the MMBench
  prompt that `get_input_text_mmbench` builds; the source of each is named in its case;
- the sandwich prompt is `src/dataset.py` with `image_position=middle`: the question without "<image>" and
  "Answer the question using a single word or phrase.", stripped, runs of blank lines collapsed, then
  "\\n<image>\\n", then the whole question (`process_image_tokens_in_conversations`); the turn is
  "User: " + that + "\\n\\n", the empty answer turn "Assistant:" (`_add_speaker_and_signal`);
- ids: each turn tokenised on its own, the user turn in chunks split at "<image>" (`preprocess`,
  `tokenize_with_image_token`), by the official `rwkv` package's tokenizer.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import pytest
from PIL import Image

from visualrwkv_eval.tasks import mini_schema, render_tasks

SHORT = "Answer the question using a single word or phrase."
MC_EN = "Answer with the option's letter from the given choices directly."
MC_CN = "请直接回答选项字母。"


def official_tokenizer():
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    return TRIE_TOKENIZER(str(resources.files("rwkv") / "rwkv_vocab_v20230424.txt"))


def reference_ids(user_value: str) -> tuple[list[int], list[int]]:
    """src/dataset.py's ids of [human: user_value, gpt: ""]: the ids before and after the image slot."""
    tok = official_tokenizer()
    before, after = f"User: {user_value}\n\n".split("<image>")
    return tok.encode(before), tok.encode(after) + tok.encode("Assistant:")


def image() -> Image.Image:
    return Image.new("RGB", (32, 24), (200, 30, 30))


def vqav2(qid: int, question: str) -> dict:
    return {"question_type": None, "multiple_choice_answer": None, "answers": None, "image_id": 1,
            "answer_type": None, "question_id": qid, "question": question, "image": image()}  # fmt: skip


def gqa(question: str) -> dict:
    return {"id": "201307251", "imageId": "n161313", "question": question, "answer": "no", "fullAnswer": "No.",
            "isBalanced": True, "groups": {"global": None, "local": "10c-sky_dark"}, "entailed": [],
            "equivalent": [], "types": {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"},
            "annotations": {"answer": "{}", "question": "{}", "fullAnswer": "{}"}, "semantic": [],
            "semanticStr": "", "image": image()}  # fmt: skip


def sqa(question: str, choices: list[str], hint: str) -> dict:
    return {"image": image(), "question": question, "choices": choices, "answer": 0, "hint": hint,
            "task": "closed choice", "grade": "grade5", "subject": "natural science", "topic": "physics",
            "category": "", "skill": "", "lecture": "", "solution": ""}  # fmt: skip


def textvqa(question: str, ocr: list[str]) -> dict:
    return {"image_id": "003a8ae2ef43b901", "question_id": 34602, "question": question, "question_tokens": [],
            "image": image(), "image_width": 32, "image_height": 24, "flickr_original_url": "",
            "flickr_300k_url": "", "answers": ["nikon"] * 10, "image_classes": [], "set_name": "val",
            "ocr_tokens": ocr}  # fmt: skip


def pope(question: str) -> dict:
    return {"id": "0", "question_id": "1", "question": question, "answer": "yes",
            "image_source": "COCO_val2014_000000310196", "image": image(), "category": "adversarial"}  # fmt: skip


def mmbench(index: int, question: str, hint: str | None, options: list[str]) -> dict:
    letters = dict(zip("ABCD", options))
    return {"index": index, "question": question, "hint": hint, "answer": "A",
            **{x: letters.get(x) for x in "ABCD"}, "category": "attribute_recognition", "image": image(),
            "source": "test", "L2-category": "finegrained_perception (instance-level)", "comment": None,
            "split": "dev"}  # fmt: skip


def mme(question: str) -> dict:
    return {"question_id": "existence/000000006040.jpg", "image": image(), "question": question, "answer": "Yes",
            "category": "existence"}  # fmt: skip


def sandwich(question: str, full: str | None = None) -> str:
    """Written out per the reference: the question without the short-answer sentence, image, all of it."""
    return f"{question}\n<image>\n{full or question}"


HINT = ("The passage below describes an experiment. Read the passage and then follow the instructions below.\n\n"
        "Brody put one steel nail into each of six test tubes.")  # fmt: skip
# (paper task, split, schema name, document, user turn value as the reference builds it)
CASES = {
    # llava_vqav2_mscoco_test-dev2015.jsonl: "{question}\nAnswer the question using a single word or phrase."
    "vqav2": ("visualrwkv_paper_vqav2_testdev", "testdev", "vqav2_test", vqav2(262148000, "Where is he looking?"),
              sandwich("Where is he looking?", f"Where is he looking?\n{SHORT}")),
    # llava_gqa_testdev_balanced.jsonl: the same suffix
    "gqa": ("visualrwkv_paper_gqa", "testdev", "gqa_testdev", gqa("Is the sky dark?"),
            sandwich("Is the sky dark?", f"Is the sky dark?\n{SHORT}")),
    # llava_test_CQM-A.json: conversations[0].value = "<image>\nContext: {hint}\n{question}\nA. ...\nB. ...",
    # sent verbatim with no suffix (evaluate.py get_input_text); the hint's blank line is collapsed by dataset.py
    "scienceqa_hint": ("visualrwkv_paper_scienceqa_img", "test", "scienceqa_img_test",
                       sqa("Identify the question that Brody's experiment can best answer.",
                           ["Do nails rust faster in water?", "Do nails rust faster in vinegar?"], HINT),
                       sandwich("Context: The passage below describes an experiment. Read the passage and then "
                                "follow the instructions below.\nBrody put one steel nail into each of six test "
                                "tubes.\nIdentify the question that Brody's experiment can best answer.\n"
                                "A. Do nails rust faster in water?\nB. Do nails rust faster in vinegar?")),
    "scienceqa_no_hint": ("visualrwkv_paper_scienceqa_img", "test", "scienceqa_img_test",
                          sqa("Which of these states is farthest north?",
                              ["West Virginia", "Louisiana", "Arizona", "Oklahoma"], ""),
                          sandwich("Which of these states is farthest north?\nA. West Virginia\nB. Louisiana\n"
                                   "C. Arizona\nD. Oklahoma")),
    # llava_textvqa_val_v051_ocr.jsonl: "{question}\nReference OCR token: {tokens joined by ', '}\n{SHORT}",
    # the question as TextVQA stores it; every line of that file has the OCR line, empty when there are none
    "textvqa_ocr": ("visualrwkv_paper_textvqa_val", "validation", "textvqa_validation",
                    textvqa("what is the brand of this camera?", ["dakota", "digital"]),
                    sandwich("what is the brand of this camera?\nReference OCR token: dakota, digital",
                             f"what is the brand of this camera?\nReference OCR token: dakota, digital\n{SHORT}")),
    "textvqa_no_ocr": ("visualrwkv_paper_textvqa_val", "validation", "textvqa_validation",
                       textvqa("what does the NASA sign say?", []),
                       sandwich("what does the NASA sign say?\nReference OCR token:",  # stripped: no trailing space
                                f"what does the NASA sign say?\nReference OCR token: \n{SHORT}")),
    # llava_pope_test.jsonl: "Is there a {object} in the image?\n{SHORT}"
    **{f"pope_{s}": (f"visualrwkv_paper_pope_{s}", split, f"pope_{split}", pope("Is there a snowboard in the image?"),
                     sandwich("Is there a snowboard in the image?", f"Is there a snowboard in the image?\n{SHORT}"))
       for s, split in (("adv", "adversarial"), ("pop", "popular"), ("random", "random"))},
    # evaluate.py get_input_text_mmbench: [hint\n]question, "\nX. option" for A-D up to the first missing one,
    # "\n" + suffix; the suffix stays in both copies (only the short-answer sentence is removed)
    "mmbench_hint_2_options": ("visualrwkv_paper_mmbench_en_dev", "dev", "mmbench_en_dev",
                               mmbench(7, "Which animal is shown?", "Look at the picture.", ["cat", "dog"]),
                               sandwich(f"Look at the picture.\nWhich animal is shown?\nA. cat\nB. dog\n{MC_EN}")),
    "mmbench_no_hint": ("visualrwkv_paper_mmbench_en_dev", "dev", "mmbench_en_dev",
                        mmbench(8, "What color is the sky?", None, ["red", "blue", "green", "grey"]),
                        sandwich(f"What color is the sky?\nA. red\nB. blue\nC. green\nD. grey\n{MC_EN}")),
    "mmbench_en_test": ("visualrwkv_paper_mmbench_en_test", "test", "mmbench_en_test",
                        mmbench(10, "Which animal is shown?", "Look at the picture.", ["cat", "dog"]),
                        sandwich(f"Look at the picture.\nWhich animal is shown?\nA. cat\nB. dog\n{MC_EN}")),
    # evaluate.py's is_none: "nan" / "none" strings (TSV artefacts) count as missing, like None
    "mmbench_nan_strings": ("visualrwkv_paper_mmbench_en_dev", "dev", "mmbench_en_dev",
                            mmbench(11, "What is shown?", "nan", ["cat", "dog", "bird", "None"]),
                            sandwich(f"What is shown?\nA. cat\nB. dog\nC. bird\n{MC_EN}")),
    "mmbench_cn": ("visualrwkv_paper_mmbench_cn_dev", "dev", "mmbench_cn_dev",
                   mmbench(9, "图中是什么动物?", "请仔细观察图片。", ["猫", "狗", "鸟"]),
                   sandwich(f"请仔细观察图片。\n图中是什么动物?\nA. 猫\nB. 狗\nC. 鸟\n{MC_CN}")),
    # LLaVA-1.5 llava_mme.jsonl: the MME question without "Please answer yes or no." (one or two spaces before
    # it in MME's files; LLaVA's convert_answer_to_mme.py re-attaches either), then "\n" + SHORT
    "mme_double_space": ("visualrwkv_paper_mme", "test", "mme_test",
                         mme("Is there a train in this image?  Please answer yes or no."),
                         sandwich("Is there a train in this image?", f"Is there a train in this image?\n{SHORT}")),
    "mme_single_space": ("visualrwkv_paper_mme", "test", "mme_test",
                         mme("Is there a bus in this image? Please answer yes or no."),
                         sandwich("Is there a bus in this image?", f"Is there a bus in this image?\n{SHORT}")),
}  # fmt: skip


@pytest.fixture(scope="module")
def requests(tmp_path_factory):
    """{case: (context, has_image, generation kwargs)} as lmms-eval builds the paper tasks' requests on the cases' documents."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    root = tmp_path_factory.mktemp("paper")
    tasks_dir = render_tasks(root / "tasks", root / "data")
    grouped: dict[tuple, list[str]] = {}
    for case, (task, split, schema, _, _) in CASES.items():
        grouped.setdefault((task, split, schema), []).append(case)
    configs = []
    for (task, split, schema), cases in grouped.items():
        path = root / f"{task}.parquet"
        mini_schema.to_parquet(schema, [CASES[c][3] for c in cases], path)
        cfg = {"task": task, "dataset_path": "parquet", "dataset_name": None,
               "dataset_kwargs": {"data_files": {split: str(path)}}}  # fmt: skip
        if task == "visualrwkv_paper_gqa":
            cfg["process_docs"] = None  # the hub's GQA joins images from another config; these rows carry theirs
        configs.append(cfg)
    manager = TaskManager(include_path=str(Path(tasks_dir)), model_name="visualrwkv")
    task_dict = get_task_dict(configs, manager)
    out = {}
    for (task, _, _), cases in grouped.items():
        obj = task_dict[task]
        obj.build_all_requests(rank=0, world_size=1)
        assert len(obj.instances) == len(cases), task
        for inst in sorted(obj.instances, key=lambda i: i.doc_id):
            context, gen_kwargs, doc_to_visual = inst.arguments[:3]
            out[cases[inst.doc_id]] = (context, bool(doc_to_visual(obj.test_docs()[inst.doc_id])), gen_kwargs)
    return out


@pytest.mark.slow  # lmms-eval indexes all its task YAMLs once per module
@pytest.mark.parametrize("case", sorted(CASES))
def test_paper_prompt_equals_the_reference(case, requests, tiny_model):
    context, has_image, gen_kwargs = requests[case]
    assert has_image
    assert gen_kwargs["max_new_tokens"] == 128 and gen_kwargs["until"] == ["\n\n"]  # evaluate.py's generation
    assert not gen_kwargs["do_sample"]
    ids = tiny_model.prompt(context, has_image)
    assert ids.has_image
    assert (ids.before, ids.after) == reference_ids(CASES[case][4]), context


def test_the_reference_ids_spelled_out():
    """The helper against the reference's verified GQA ids (30 ids, the image between them)."""
    before, after = reference_ids(sandwich("Is the sky dark?", f"Is the sky dark?\n{SHORT}"))
    assert before == [24281, 59, 3917, 22590, 22485, 30575, 64, 11]
    assert after == [11, 1140, 22590, 22485, 30575, 64, 11, 40301, 22590, 57009, 40085, 332, 47289, 32497, 4715,
                     46808, 47, 261, 5585, 41693, 59]  # fmt: skip


@pytest.mark.slow
def test_mme_double_space_gives_newline_not_space_newline(requests, tiny_model):
    """lmms-eval's `mme` leaves "? \\nAnswer" for a double-spaced question: token 265 (" \\n"), not 11."""
    context = requests["mme_double_space"][0]
    assert context == f"Is there a train in this image?\n{SHORT}"
    assert 265 not in tiny_model.prompt(context, True).after


@pytest.mark.parametrize(
    ("answer", "letter"),
    [("B", "B"), ("B. sample A", "B"), ("The answer is B.", "B"), ("b", None), ("B.", None), ("E", None),
     ("The answer is A. The answer is B.", None), ("I think A", None)],
)  # fmt: skip
def test_scienceqa_answers_parsed_as_the_reference(answer, letter):
    """eval/eval_science_qa.py: a letter, "X. ...", or exactly one "The answer is X."; within the choices."""
    from visualrwkv_eval.tasks.scoring import sqa_reference_answer, sqa_reference_process_results

    assert sqa_reference_answer(answer, n_choices=4) == letter
    doc = {"choices": ["a", "b", "c", "d"], "answer": 1}
    assert sqa_reference_process_results(doc, [answer]) == {"exact_match": float(letter == "B")}


# ---- VQAv2 test-dev submission -------------------------------------------------------------------------
def normalise(answer: str) -> str:
    from lmms_eval.tasks._task_utils.vqa_eval_metric import EvalAIAnswerProcessor

    return EvalAIAnswerProcessor()(answer)


def official_vqa_accuracy(answer: str, humans: list[str]) -> float:
    """The VQA evaluation (vqaEval.py of the VQA API): the prediction and the human answers are normalised only
    when the humans disagree; each of the 10 leave-one-out subsets of 9 humans gives min(#matches / 3, 1)."""
    from lmms_eval.tasks._task_utils.vqa_eval_metric import EvalAIAnswerProcessor

    p = EvalAIAnswerProcessor()
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    if len(set(humans)) > 1:
        humans = [p.process_digit_article(p.process_punctuation(h)) for h in humans]
        answer = p.process_digit_article(p.process_punctuation(answer))
    subsets = [humans[:i] + humans[i + 1 :] for i in range(len(humans))]
    return sum(min(sum(h == answer for h in others) / 3, 1.0) for others in subsets) / len(subsets)


def score(submission: list[dict], known: dict[int, list[str]]) -> float:
    """Mean official accuracy over the questions with known answers (a missing or empty answer scores 0)."""
    answers = {row["question_id"]: row["answer"] for row in submission}
    return sum(official_vqa_accuracy(answers.get(q, ""), humans) for q, humans in known.items()) / len(known)


def test_official_vqa_accuracy_and_why_answers_are_normalised():
    assert official_vqa_accuracy("Yes", ["yes"] * 10) == 0.0  # unanimous humans: the prediction is not normalised
    assert official_vqa_accuracy(normalise("Yes."), ["yes"] * 10) == 1.0
    assert official_vqa_accuracy(normalise("Two"), ["2"] * 10) == 1.0
    # 2 of 10 humans said "2": subsets without one of them hold 1 match (1/3), the 8 others 2 matches (2/3)
    assert official_vqa_accuracy("2", ["2", "2"] + ["3"] * 8) == pytest.approx((2 / 3 + 8 * 2 / 3) / 10)
    assert official_vqa_accuracy("Two", ["two", "2"] + ["3"] * 8) == pytest.approx(0.6)  # disagreeing: normalised


def test_answers_are_normalised_as_evalai_expects():
    from visualrwkv_eval.tasks.submission import vqav2_normalised_process_results

    out = {a: vqav2_normalised_process_results({"question_id": 7}, [a])["submission"] for a in ("Yes.", "Two", "A dog")}
    assert {a: s["answer"] for a, s in out.items()} == {"Yes.": "yes", "Two": "2", "A dog": "dog"}
    assert all(s["question_id"] == 7 for s in out.values())


def test_every_test2015_id_gets_an_entry(tmp_path):
    """Ids from the official question file, LLaVA's jsonl or the hub split's parquet; "" where unanswered."""
    from visualrwkv_eval.tasks.submission import complete_submission, read_question_ids

    ids = [262148000, 262148001, 393225000]
    official = tmp_path / "v2_OpenEnded_mscoco_test2015_questions.json"
    official.write_text(json.dumps({"questions": [{"image_id": 1, "question": "q", "question_id": q} for q in ids]}))
    llava = tmp_path / "llava_vqav2_mscoco_test2015.jsonl"
    llava.write_text("".join(json.dumps({"question_id": q, "image": "x.jpg", "text": "q"}) + "\n" for q in ids))
    parquet = tmp_path / "test.parquet"
    mini_schema.to_parquet("vqav2_test", [vqav2(q, "q") for q in ids], parquet)
    for source in (official, llava, parquet, tmp_path):
        assert read_question_ids(source) == ids, source
    rows = complete_submission([{"question_id": 262148001, "answer": "yes"}], ids)
    assert rows == [{"question_id": 262148000, "answer": ""}, {"question_id": 262148001, "answer": "yes"},
                    {"question_id": 393225000, "answer": ""}]  # fmt: skip


def override(task: str, split: str, path: Path) -> dict:
    return {"task": task, "dataset_path": "parquet", "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(path)}}}  # fmt: skip


@pytest.fixture(scope="module")
def submission_run(demo_dir, tmp_path_factory):
    """The real CLI with the tiny model on the paper tasks that write submission files: VQAv2 test-dev on a mini
    test2015 (20 questions) whose test-dev split is its first 12, MMBench-EN test and TextVQA val."""
    import datasets
    import yaml
    from test_lmms_e2e import run_cli

    from visualrwkv_eval.tasks.submission import TEST_QUESTIONS_ENV

    tmp = tmp_path_factory.mktemp("submissions")
    data = demo_dir / "data"
    testdev = tmp / "vqav2_testdev.parquet"
    datasets.Dataset.from_parquet(str(data / "vqav2_test.parquet")).select(range(12)).to_parquet(str(testdev))
    overrides = tmp / "overrides"
    overrides.mkdir()
    for name, cfg in {
        "vqav2_testdev": override("visualrwkv_paper_vqav2_testdev", "testdev", testdev),
        "mmbench_en_test": override("visualrwkv_paper_mmbench_en_test", "test", data / "mmbench_en_test.parquet"),
        "textvqa_val": override("visualrwkv_paper_textvqa_val", "validation", data / "textvqa_validation.parquet"),
    }.items():
        (overrides / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    os.environ[TEST_QUESTIONS_ENV] = str(data / "vqav2_test.parquet")  # run_cli passes os.environ on
    try:
        return run_cli(demo_dir, tmp / "out", str(overrides), "--include_path", str(demo_dir / "tasks"))
    finally:
        del os.environ[TEST_QUESTIONS_ENV]


def responses(samples: list[dict], key: str, field: str) -> dict:
    """{the sample's <key>[<field>]: the model's answer} from lmms-eval's per-sample log."""
    first = lambda r: r[0] if isinstance(r, list) else r  # noqa: E731  (a list or the string itself)
    return {s[key][field]: first(s["filtered_resps"]) for s in samples}


@pytest.mark.slow
def test_vqav2_testdev_submission_from_the_cli(submission_run, demo_dir):
    """Every test2015 id in order, the test-dev answers normalised, the others empty; scored by the official
    evaluation as the model's answers would be."""
    import datasets

    _, samples, out = submission_run
    (path,) = (out / "submissions").glob("vqav2-test-submission-*.json")
    submission = json.loads(path.read_text())
    ids = [int(q) for q in datasets.Dataset.from_parquet(str(demo_dir / "data" / "vqav2_test.parquet"))["question_id"]]
    assert [row["question_id"] for row in submission] == ids
    raw = responses(samples["visualrwkv_paper_vqav2_testdev"], "submission", "question_id")
    assert sorted(raw) == ids[:12]
    for row in submission:
        q, answer = row["question_id"], row["answer"]
        assert answer == (normalise(raw[q]) if q in raw else ""), (q, answer, raw.get(q))
        assert normalise(answer) == answer
    # humans who all gave the model's answer as a person would write it: each answered question scores 1
    known = {q: [normalise(a)] * 10 for q, a in raw.items()}
    assert score(submission, known) == 1.0
    assert score(submission, {**known, **{q: ["yes"] * 10 for q in ids[12:]}}) == pytest.approx(12 / 20)


@pytest.mark.slow
def test_mmbench_test_xlsx_has_the_columns_the_server_reads(submission_run, demo_dir):
    """The reference's convert_mmbench_for_submission.py uploads index, question, A-D, prediction, answer and
    split (the TSV less hint, category, source, image, comment, l2-category): lmms-eval's xlsx holds all of
    them, one row per test question, with the model's raw answers."""
    import pandas as pd
    import pyarrow.parquet as pq

    _, samples, out = submission_run
    sheet = pd.read_excel(out / "submissions" / "mmbench_en_test_results.xlsx")
    assert {"index", "question", "A", "B", "C", "D", "prediction", "answer", "split"} <= set(sheet.columns)
    indices = pq.read_table(demo_dir / "data" / "mmbench_en_test.parquet", columns=["index"]).column(0).to_pylist()
    assert sorted(sheet["index"]) == sorted(indices)
    raw = responses(samples["visualrwkv_paper_mmbench_en_test"], "submission", "index")
    assert {i: "" if pd.isna(p) else str(p) for i, p in zip(sheet["index"], sheet["prediction"])} == raw


@pytest.mark.slow
def test_textvqa_submission_is_complete_and_normalised(submission_run, demo_dir):
    """EvalAI's TextVQA format: [{"question_id": int, "answer": str}], every question, answers normalised."""
    import pyarrow.parquet as pq

    _, samples, out = submission_run
    (path,) = (out / "submissions").glob("textvqa_submission_*.json")
    submission = json.loads(path.read_text())
    table = pq.read_table(demo_dir / "data" / "textvqa_validation.parquet", columns=["question_id"])
    assert sorted(row["question_id"] for row in submission) == sorted(table.column(0).to_pylist())
    raw = responses(samples["visualrwkv_paper_textvqa_val"], "submission", "question_id")
    assert {row["question_id"]: row["answer"] for row in submission} == {q: normalise(a) for q, a in raw.items()}
