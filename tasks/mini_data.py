"""Offline mini versions of the eight benchmarks: small parquet files with the column names and types of the
hub data sets (the lmms-lab data sets that lmms-eval's task YAMLs load), over images drawn with PIL so that every question has a real answer.

Images are scenes of coloured shapes on a background, sometimes with a rendered word; questions ask for
colours, counts, existence, positions and text. Generation is deterministic for a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = {
    "red": (214, 39, 40), "green": (44, 160, 44), "blue": (31, 119, 180), "yellow": (250, 210, 30),
    "purple": (148, 103, 189), "orange": (255, 127, 14), "black": (20, 20, 20), "white": (245, 245, 245),
}  # fmt: skip
COLOURS_CN = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色",
              "black": "黑色", "white": "白色"}  # fmt: skip
SHAPES = ("circle", "square", "triangle")
SHAPES_CN = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}
WORDS = ("STOP", "OPEN", "CAFE", "EXIT", "SALE", "TAXI", "HOTEL", "PARK", "BANK", "ZOO")
NUMBERS = ("zero", "one", "two", "three", "four", "five")


@dataclass
class Shape:
    kind: str
    colour: str
    box: tuple[int, int, int, int]  # left, top, right, bottom


@dataclass
class Scene:
    background: str
    shapes: list[Shape]
    word: str | None = None
    size: tuple[int, int] = (320, 240)

    def count(self, kind: str) -> int:
        return sum(s.kind == kind for s in self.shapes)

    def draw(self) -> Image.Image:
        im = Image.new("RGB", self.size, COLOURS[self.background])
        d = ImageDraw.Draw(im)
        for s in self.shapes:
            fill = COLOURS[s.colour]
            if s.kind == "circle":
                d.ellipse(s.box, fill=fill)
            elif s.kind == "square":
                d.rectangle(s.box, fill=fill)
            else:
                left, top, right, bottom = s.box
                d.polygon([((left + right) // 2, top), (right, bottom), (left, bottom)], fill=fill)
        if self.word:
            ink = "white" if self.background in ("black", "blue", "purple") else "black"
            d.text((12, self.size[1] - 44), self.word, fill=COLOURS[ink], font=ImageFont.load_default(size=32))
        return im


def random_scene(rng: random.Random, n_shapes: int | None = None, word: bool = False) -> Scene:
    background = rng.choice(["white", "black", "blue", "yellow"])
    colours = [c for c in COLOURS if c != background]
    shapes, width = [], 320 // 4
    for slot in rng.sample(range(4), n_shapes if n_shapes is not None else rng.randint(1, 3)):
        left = slot * width + 8
        shapes.append(Shape(rng.choice(SHAPES), rng.choice(colours), (left, 40, left + width - 16, 40 + width - 16)))
    return Scene(background, shapes, rng.choice(WORDS) if word else None)


def unique_shape(scene: Scene) -> Shape | None:
    once = [s for s in scene.shapes if scene.count(s.kind) == 1]
    return once[0] if once else None


def qa_pairs(scene: Scene, rng: random.Random) -> list[tuple[str, str, str]]:
    """(question type, question, answer) triples that the scene answers."""
    pairs = [("what color is the", "What color is the background?", scene.background)]
    shape = unique_shape(scene)
    if shape:
        pairs.append(("what color is the", f"What color is the {shape.kind}?", shape.colour))
    kind = rng.choice(SHAPES)
    pairs.append(("how many", f"How many {kind}s are there?", str(scene.count(kind))))
    kind = rng.choice(SHAPES)
    pairs.append(("is there a", f"Is there a {kind} in the image?", "yes" if scene.count(kind) else "no"))
    if scene.word:
        pairs.append(("what does the", "What word is written in the image?", scene.word.lower()))
    return pairs


def _scenes_with_questions(rng: random.Random, n: int, word_every: int = 3):
    out = []
    while len(out) < n:
        scene = random_scene(rng, word=len(out) % word_every == 0)
        out.extend((scene, qa) for qa in rng.sample(qa_pairs(scene, rng), 2))
    return out[:n]


# ---- the eight benchmarks ------------------------------------------------------------------------------
def vqav2_rows(rng: random.Random, n: int, with_answers: bool) -> list[dict]:
    rows = []
    for i, (scene, (qtype, question, answer)) in enumerate(_scenes_with_questions(rng, n)):
        answer_type = "yes/no" if answer in ("yes", "no") else "number" if answer.isdigit() else "other"
        answers = [
            {
                "answer": answer if j < 8 else rng.choice(["maybe", "unknown"]),
                "answer_confidence": "yes",
                "answer_id": j + 1,
            }
            for j in range(10)
        ]
        rows.append({
            "question_type": qtype if with_answers else None,
            "multiple_choice_answer": answer if with_answers else None,
            "answers": answers if with_answers else None,
            "image_id": 100000 + i // 2,
            "answer_type": answer_type if with_answers else None,
            "question_id": 5000000 + i,
            "question": question,
            "image": scene.draw(),
        })  # fmt: skip
    return rows


def gqa_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for i, (scene, (qtype, question, answer)) in enumerate(_scenes_with_questions(rng, n)):
        rows.append({
            "id": str(20000000 + i), "imageId": f"n{300000 + i // 2}", "question": question, "answer": answer,
            "fullAnswer": f"The answer is {answer}.", "isBalanced": True,
            "groups": {"global": qtype, "local": f"10q-{qtype}"}, "entailed": [], "equivalent": [str(20000000 + i)],
            "types": {"structural": "query", "semantic": "attr", "detailed": qtype.replace(" ", "")},
            "annotations": {"answer": "{}", "question": "{}", "fullAnswer": "{}"},
            "semantic": [{"operation": "select", "argument": "scene", "dependencies": []}],
            "semanticStr": "select: scene", "image": scene.draw(),
        })  # fmt: skip
    return rows


def scienceqa_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for i, (scene, (_, question, answer)) in enumerate(_scenes_with_questions(rng, n)):
        pool = sorted({answer, *rng.sample(list(COLOURS) + ["0", "1", "2", "3", "yes", "no"], 4)} - {answer})
        choices = [answer, *rng.sample(pool, rng.randint(1, 3))]
        rng.shuffle(choices)
        rows.append({
            "image": scene.draw(), "question": question, "choices": choices, "answer": choices.index(answer),
            "hint": "The picture shows simple shapes." if i % 2 else "", "task": "closed choice",
            "grade": f"grade{2 + i % 6}", "subject": "natural science", "topic": "colors-and-shapes",
            "category": "Identify shapes", "skill": "Identify colors and shapes", "lecture": "", "solution": "",
        })  # fmt: skip
    return rows


def textvqa_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        scene = random_scene(rng, word=True)
        question = rng.choice(["what word is written in the image?", "what does the text say?"])
        rows.append({
            "image_id": f"{i:016x}", "question_id": 34602 + i, "question": question,
            "question_tokens": question.rstrip("?").split(), "image": scene.draw(),
            "image_width": scene.size[0], "image_height": scene.size[1],
            "flickr_original_url": "", "flickr_300k_url": "", "answers": [scene.word.lower()] * 9 + ["sign"],
            "image_classes": ["Sign"], "set_name": "val", "ocr_tokens": [scene.word.lower(), rng.choice(WORDS).lower()],
        })  # fmt: skip
    return rows


def pope_rows(rng: random.Random, per_category: int) -> list[dict]:
    """Half the questions ask about a shape that is there, half about one that is not, as in POPE."""
    rows = []
    for category in ("adversarial", "popular", "random"):
        for i in range(per_category):
            scene = random_scene(rng)
            present = [k for k in SHAPES if scene.count(k)]
            absent = [k for k in SHAPES if not scene.count(k)]
            kind = rng.choice(present if i % 2 == 0 or not absent else absent)
            rows.append({
                "id": str(len(rows)), "question_id": str(len(rows) + 1),
                "question": f"Is there a {kind} in the image?", "answer": "yes" if scene.count(kind) else "no",
                "image_source": f"COCO_val2014_{len(rows):012d}", "image": scene.draw(), "category": category,
            })  # fmt: skip
    return rows


def mmbench_rows(rng: random.Random, n: int, split: str, chinese: bool) -> list[dict]:
    """Questions with 2-4 options, some with hints; dev rows get circular copies (index + k * 1e6)."""
    rows = []
    for i in range(n):
        scene = random_scene(rng, n_shapes=1)
        shape = scene.shapes[0]
        options = [shape.colour, *rng.sample([c for c in COLOURS if c != shape.colour], rng.randint(1, 3))]
        rng.shuffle(options)
        name = (lambda c: COLOURS_CN[c]) if chinese else (lambda c: c)
        question = f"图中{SHAPES_CN[shape.kind]}是什么颜色?" if chinese else f"What color is the {shape.kind}?"
        hint = ("请仔细观察图片。" if chinese else "Look at the picture carefully.") if i % 3 == 0 else None
        image = scene.draw()
        for k in range(len(options) if split == "dev" else 1):
            rotated = options[k:] + options[:k]
            letters = dict(zip("ABCD", rotated))
            rows.append({
                "index": i + k * 1_000_000, "question": question, "hint": hint,
                "answer": "ABCD"[rotated.index(shape.colour)] if split == "dev" else None,
                **{letter: name(letters[letter]) if letter in letters else None for letter in "ABCD"},
                "category": "attribute_recognition", "image": image, "source": "visualrwkv-mini",
                "L2-category": "finegrained_perception (instance-level)", "comment": None, "split": split,
            })  # fmt: skip
    return rows


MME_PERCEPTION = ("existence", "count", "color", "position", "OCR")
MME_COGNITION = ("numerical_calculation", "commonsense_reasoning", "text_translation", "code_reasoning")


def mme_rows(rng: random.Random) -> list[dict]:
    """Question pairs (one Yes, one No) per image, over perception and cognition categories."""
    rows = []
    for category in MME_PERCEPTION + MME_COGNITION:
        for j in range(2 if category in MME_PERCEPTION else 1):
            scene = random_scene(rng, n_shapes=2, word=category == "OCR")
            a, b = scene.shapes
            right, wrong = {
                "existence": (f"Is there a {a.kind} in this image?", f"Is there a {_absent(scene)} in this image?"),
                "count": (f"Are there {NUMBERS[scene.count(a.kind)]} {a.kind}s in the image?",
                          f"Are there {NUMBERS[scene.count(a.kind) + 2]} {a.kind}s in the image?"),
                "color": (f"Is there a {a.colour} {a.kind} in the image?",
                          f"Is there a {_other_colour(scene, a)} {a.kind} in the image?"),
                "position": (f"Is the {a.colour} {a.kind} on the left of the {b.colour} {b.kind}?",
                             f"Is the {a.colour} {a.kind} on the right of the {b.colour} {b.kind}?")
                if a.box[0] < b.box[0] else
                (f"Is the {a.colour} {a.kind} on the right of the {b.colour} {b.kind}?",
                 f"Is the {a.colour} {a.kind} on the left of the {b.colour} {b.kind}?"),
                "OCR": (f'Is the word in the image "{scene.word}"?', f'Is the word in the image "{_other_word(scene)}"?'),
                "numerical_calculation": ("Is the number of shapes in the image equal to 2?",
                                          "Is the number of shapes in the image equal to 5?"),
                "commonsense_reasoning": ("Could these shapes be drawn on paper?", "Are these shapes alive?"),
                "text_translation": (f'Is "{a.colour}" a colour?', f'Is "{a.colour}" an animal?'),
                "code_reasoning": ("Would print(1 + 1) output 2?", "Would print(1 + 1) output 3?"),
            }[category]  # fmt: skip
            image, qid = scene.draw(), f"{category}/{j:04d}.png"
            for question, answer in ((right, "Yes"), (wrong, "No")):
                rows.append({"question_id": qid, "image": image, "question": f"{question} Please answer yes or no.",
                             "answer": answer, "category": category})  # fmt: skip
    return rows


def _absent(scene: Scene) -> str:
    return next(k for k in SHAPES if not scene.count(k))


def _other_colour(scene: Scene, shape: Shape) -> str:
    return next(
        c for c in COLOURS if c not in (shape.colour, scene.background) and c not in [s.colour for s in scene.shapes]
    )


def _other_word(scene: Scene) -> str:
    return next(w for w in WORDS if w != scene.word)


def write_mini_benchmarks(out: str | Path, seed: int = 0, rows: int = 20) -> dict[str, Path]:
    """Write every mini data set as parquet under `out`; returns {name: path}."""
    from . import mini_schema

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sets = {
        "vqav2_validation": vqav2_rows(rng, rows, with_answers=True),
        "vqav2_test": vqav2_rows(rng, rows, with_answers=False),
        "gqa_testdev": gqa_rows(rng, rows),
        "scienceqa_img_test": scienceqa_rows(rng, rows),
        "textvqa_validation": textvqa_rows(rng, rows),
        "pope_test": pope_rows(rng, -(-rows // 3)),
        "mmbench_en_dev": mmbench_rows(rng, rows // 2, "dev", chinese=False),
        "mmbench_en_test": mmbench_rows(rng, rows, "test", chinese=False),
        "mmbench_cn_dev": mmbench_rows(rng, rows // 2, "dev", chinese=True),
        "mmbench_cn_test": mmbench_rows(rng, rows, "test", chinese=True),
        "mme_test": mme_rows(rng),
    }
    for category in ("adversarial", "popular", "random"):
        sets[f"pope_{category}"] = [r for r in sets["pope_test"] if r["category"] == category]
    paths = {}
    for name, data in sets.items():
        paths[name] = out / f"{name}.parquet"
        mini_schema.to_parquet(name, data, paths[name])
    return paths
