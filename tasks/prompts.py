"""The reference's question text for the paper group (`visualrwkv_paper`), where lmms-eval's own doc_to_text
differs from it. Each function returns the text that the reference (howard-hou/VisualRWKV,
`VisualRWKV-v6/v6.0/evaluate.py`) hands to its prompt template for the same item; the adapter then wraps
it in the sandwich prompt exactly as the reference's `src/dataset.py` does.

Benchmarks whose lmms-eval text already equals the reference's are not here: VQAv2, GQA and POPE (the
LLaVA-1.5 question files' `{question}\\nAnswer the question using a single word or phrase.`), and ScienceQA-IMG,
whose paper YAML only empties lmms-eval's instruction suffix.
"""

from __future__ import annotations

import math
import re

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
# MME's own instruction, with any whitespace before it (some questions have two spaces)
MME_YES_NO = re.compile(r"\s*Please answer yes or no\.")


def is_none(value: object) -> bool:
    """evaluate.py's `is_none`: None, a float NaN, or the strings 'nan' / 'none' in any case (TSV artefacts)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.lower() in ("nan", "none")


def mmbench_reference_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """evaluate.py's `get_input_text_mmbench`: hint, question, options A-D up to the first missing one, and
    the language's suffix (the YAML's post_prompt)."""
    question = doc["question"]
    if not is_none(doc.get("hint")):
        question = f"{doc['hint']}\n{question}"
    for letter in "ABCD":  # the reference reads A-D only and stops at the first missing option
        if is_none(doc.get(letter)):
            break
        question += f"\n{letter}. {doc[letter]}"
    return question + (lmms_eval_specific_kwargs or {}).get("post_prompt", "")


def mme_reference_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """LLaVA-1.5's llava_mme.jsonl text: the MME question without "Please answer yes or no." and the
    whitespace before it, then the short-answer suffix. lmms-eval removes only " Please answer yes or no.",
    so a question stored with two spaces keeps one, and the prompt gets " \\n" (token 265) where the
    reference has "\\n" (11). LLaVA's convert_answer_to_mme.py re-attaches either one or two spaces to match
    its answers back to MME's files, which shows its question file has neither."""
    question = MME_YES_NO.sub("", doc["question"]).strip()
    return question + (lmms_eval_specific_kwargs or {}).get("post_prompt", SHORT_ANSWER)


def textvqa_reference_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """LLaVA-1.5's llava_textvqa_val_v051_ocr.jsonl text: the question as TextVQA stores it (lmms-eval
    capitalises it, which also lower-cases every later letter), the OCR tokens joined by ", " on a
    "Reference OCR token: " line (present, empty, when there are none), and the short-answer suffix."""
    ocr = ", ".join(doc.get("ocr_tokens") or [])
    return f"{doc['question']}\nReference OCR token: {ocr}" + (lmms_eval_specific_kwargs or {}).get(
        "post_prompt", SHORT_ANSWER
    )
