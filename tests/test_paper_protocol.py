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
    """{case: (context, has_image)} as lmms-eval builds the paper tasks' requests on the cases' documents."""
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
            context, doc_to_visual = inst.arguments[0], inst.arguments[2]
            out[cases[inst.doc_id]] = (context, bool(doc_to_visual(obj.test_docs()[inst.doc_id])))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_paper_prompt_equals_the_reference(case, requests, tiny_model):
    context, has_image = requests[case]
    assert has_image
    ids = tiny_model.prompt(context, has_image)
    assert ids.has_image
    assert (ids.before, ids.after) == reference_ids(CASES[case][4]), context


def test_the_reference_ids_spelled_out():
    """The helper against the reference's verified GQA ids (30 ids, the image between them)."""
    before, after = reference_ids(sandwich("Is the sky dark?", f"Is the sky dark?\n{SHORT}"))
    assert before == [24281, 59, 3917, 22590, 22485, 30575, 64, 11]
    assert after == [11, 1140, 22590, 22485, 30575, 64, 11, 40301, 22590, 57009, 40085, 332, 47289, 32497, 4715,
                     46808, 47, 261, 5585, 41693, 59]  # fmt: skip


def test_mme_double_space_gives_newline_not_space_newline(requests, tiny_model):
    """lmms-eval's `mme` leaves "? \\nAnswer" for a double-spaced question: token 265 (" \\n"), not 11."""
    context, _ = requests["mme_double_space"]
    assert context == f"Is there a train in this image?\n{SHORT}"
    assert 265 not in tiny_model.prompt(context, True).after
