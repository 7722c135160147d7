"""Checks of the adapter's settings: model_args (when the model is built) and gen_kwargs (when a request arrives).

A wrong setting is wrong for every document. Left unchecked, several of them gave a run that exits 0 and
scores every answer as empty (batch_size -3, max_new_tokens 0), so each is refused with a message that names
the argument, its value and what is allowed, before the checkpoint is read or any answer is computed.
Values arrive as lmms-eval parses them: `--batch_size` as a string, model_args through its
`handle_arg_string` (ints, floats, bools or strings), gen_kwargs from task YAMLs or `--gen_kwargs`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


class SettingError(ValueError):
    """A model_arg or generation argument that cannot give a meaningful run."""


def whole_number(name: str, value: Any, allowed: str = "a whole number >= 1", where: str = "", minimum: int = 1) -> int:
    """`value` as an int >= `minimum` (an int, an integral float, or the digits of one), else SettingError."""
    number = None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    if number is None or number < minimum:
        raise SettingError(f"{name}={value!r}{where}: expected {allowed}")
    return number


def parse_batch_size(batch_size: Any, max_batch_size: Any) -> tuple[int | None, int | None]:
    """(requests per batch, or None for auto; the cap, or None) from lmms-eval's --batch_size and
    --max_batch_size. lmms-eval also spells auto as auto:N (re-estimate N times); one estimate serves here."""
    cap = None if max_batch_size is None else whole_number("max_batch_size", max_batch_size)
    text = str(batch_size).strip().lower()
    if text == "auto" or (text.startswith("auto:") and text[5:].isdigit()):
        return None, cap
    return whole_number("batch_size", batch_size, "a whole number >= 1, or auto"), cap


def _number(name: str, value: Any, task: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise SettingError(f"gen_kwargs {name}={value!r} (task {task}): expected a finite number")
    return float(value)


def _until(value: Any, task: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):  # one stop string, never its characters
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(u, str) for u in value):
        return tuple(value)
    raise SettingError(f"gen_kwargs until={value!r} (task {task}): expected a string or a list of strings")


def _do_sample(value: Any, task: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise SettingError(f"gen_kwargs do_sample={value!r} (task {task}): expected true or false")


def generation_settings(gen_kwargs: dict, default_max_new_tokens: int, task: str) -> dict:
    """max_new_tokens, until, temperature (0: greedy) and top_p of a request, in HF transformers' semantics,
    for which lmms-eval's task YAMLs are written: sampling only with do_sample and a temperature > 0; top_p
    counts only when sampling (POPE sends top_p 0 with greedy decoding), and top_p 0 keeps the most likely
    token (ConBench samples with it). A missing or null value takes its default."""
    if not isinstance(gen_kwargs, dict):
        raise SettingError(f"gen_kwargs={gen_kwargs!r} (task {task}): expected a dict")
    get = lambda key, default: default if gen_kwargs.get(key) is None else gen_kwargs[key]  # noqa: E731
    max_new_tokens = get("max_new_tokens", default_max_new_tokens)
    max_new_tokens = whole_number("gen_kwargs max_new_tokens", max_new_tokens, where=f" (task {task})")
    temperature = _number("temperature", get("temperature", 1.0), task)
    if temperature < 0:
        raise SettingError(f"gen_kwargs temperature={temperature!r} (task {task}): expected a number >= 0 (0: greedy)")
    top_p = _number("top_p", get("top_p", 1.0), task)
    sample = _do_sample(gen_kwargs.get("do_sample"), task) and temperature > 0
    if not 0 <= top_p <= 1:
        raise SettingError(f"gen_kwargs top_p={gen_kwargs.get('top_p')!r} (task {task}): expected a number in [0, 1]")
    num_beams = get("num_beams", 1)
    if num_beams != 1:  # silently decoding greedily would report numbers for a setting that never ran
        raise SettingError(
            f"gen_kwargs num_beams={num_beams!r} (task {task}): VisualRWKV decodes greedily or by sampling; "
            "beam search is not implemented (use 1)"
        )
    return dict(
        max_new_tokens=max_new_tokens,
        until=_until(gen_kwargs.get("until"), task),
        temperature=temperature if sample else 0.0,
        top_p=top_p if sample else 1.0,
    )
