"""The VisualRWKV-7 group (`visualrwkv7_paper`): lmms-eval builds, for each of the four benchmarks that v7.00
publishes, the question text that the reference's VisualRWKV-v7/v7.00/evaluate.py reads from LLaVA-1.5's question
files (written out here, not taken from this project's prompt code), with evaluate.py's generation settings, and
GQA is scored as v7.00's eval/convert_gqa_for_eval.py + eval/eval_gqa.py score it."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_paper_protocol import MC_EN, SHORT, gqa, sqa, textvqa, vqav2

from visualrwkv_eval.tasks import PAPER7_GROUP, mini_schema, render_tasks

# (task, split, schema, document, the question text evaluate.py reads)
CASES = {
    "vqav2": ("visualrwkv7_paper_vqav2_testdev", "testdev", "vqav2_test", vqav2(262148000, "Where is he looking?"),
              f"Where is he looking?\n{SHORT}"),
    "gqa": ("visualrwkv7_paper_gqa", "testdev", "gqa_testdev", gqa("Is the sky dark?"), f"Is the sky dark?\n{SHORT}"),
    # llava_test_CQM-A.json's conversation value; eval_scienceqa.sh passes no --dataset_name: no suffix
    "scienceqa": ("visualrwkv7_paper_scienceqa_img", "test", "scienceqa_img_test",
                  sqa("Which of these states is farthest north?", ["West Virginia", "Louisiana"], ""),
                  "Which of these states is farthest north?\nA. West Virginia\nB. Louisiana"),
    "scienceqa_suffix": ("visualrwkv7_paper_scienceqa_img_suffix", "test", "scienceqa_img_test",
                         sqa("Which of these states is farthest north?", ["West Virginia", "Louisiana"], ""),
                         f"Which of these states is farthest north?\nA. West Virginia\nB. Louisiana\n{MC_EN}"),
    "textvqa": ("visualrwkv7_paper_textvqa_val", "validation", "textvqa_validation",
                textvqa("what is the brand of this camera?", ["dakota", "digital"]),
                f"what is the brand of this camera?\nReference OCR token: dakota, digital\n{SHORT}"),
}  # fmt: skip


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """{case: (lmms-eval task object, context, generation kwargs)} built by lmms-eval on the cases' documents."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    root = tmp_path_factory.mktemp("paper7")
    tasks_dir = render_tasks(root / "tasks", root / "data")
    configs = []
    for case, (task, split, schema, doc, _) in CASES.items():
        path = root / f"{case}.parquet"
        mini_schema.to_parquet(schema, [doc], path)
        cfg = {"task": task, "dataset_path": "parquet", "dataset_name": None,
               "dataset_kwargs": {"data_files": {split: str(path)}}}  # fmt: skip
        if schema == "gqa_testdev":
            cfg["process_docs"] = None  # the hub's GQA joins images from another config; this row carries its own
        configs.append(cfg)
    manager = TaskManager(include_path=str(Path(tasks_dir)), model_name="visualrwkv")
    group = manager._get_config(PAPER7_GROUP)
    task_dict = get_task_dict(configs, manager)
    out = {}
    for case, (task, *_) in CASES.items():
        obj = task_dict[task]
        obj.build_all_requests(rank=0, world_size=1)
        (inst,) = obj.instances
        out[case] = (obj, inst.arguments[0], inst.arguments[1])
    return group, out


@pytest.mark.slow  # lmms-eval indexes all its task YAMLs
def test_v7_group_and_question_texts(tasks):
    group, built = tasks
    assert group["task"] == [c[0] for k, c in CASES.items() if k != "scienceqa_suffix"]
    for case, (_, context, gen_kwargs) in built.items():
        assert context == CASES[case][4], case
        assert gen_kwargs["max_new_tokens"] == 128 and gen_kwargs["until"] == ["\n\n"], case
        assert not gen_kwargs["do_sample"], case


# (answer, gold, v7.00 verdict): evaluate.py's answer is already stripped; convert_gqa_for_eval.py removes
# trailing dots and lower-cases, eval_gqa.py compares with ==
GQA_V7 = [("No", "no", 1.0), ("No.", "no", 1.0), ("no..", "no", 1.0), ("T-shirt", "tshirt", 0.0),
          ("t-shirt", "t-shirt", 1.0), ("No, it is not", "no", 0.0), ("a dog", "dog", 0.0), ("Dog!", "dog", 0.0)]  # fmt: skip


@pytest.mark.parametrize(("answer", "gold", "score"), GQA_V7)
def test_gqa_scored_as_v7_reference(answer, gold, score):
    from visualrwkv_eval.tasks.scoring import gqa_v7_reference_process_results

    assert gqa_v7_reference_process_results({"answer": gold}, [answer]) == {"exact_match": score}


@pytest.mark.slow
def test_gqa_task_uses_the_v7_scorer(tasks):
    """Through the task object lmms-eval runs: "T-shirt" is wrong against "tshirt" (lmms-eval's own exact match,
    which drops punctuation, would count it right)."""
    obj = tasks[1]["gqa"][0]
    assert obj.process_results({"answer": "no"}, ["No."]) == {"exact_match": 1.0}
    assert obj.process_results({"answer": "tshirt"}, ["T-shirt"]) == {"exact_match": 0.0}
