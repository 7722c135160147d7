"""lmms-eval task definitions: the offline mini benchmarks (group `visualrwkv_mini`), the VisualRWKV-6 paper's
protocol (group `visualrwkv_paper`) and VisualRWKV-7's published protocol (group `visualrwkv7_paper`).

The YAMLs in mini/ and paper/ are templates: each includes the installed lmms-eval's own YAML for its
benchmark (prompts, process_results, metrics, aggregation) and overrides only what differs. lmms-eval can
include a file only by an absolute path, so `render_tasks` writes them out with three paths filled in:
$LMMS_EVAL_TASKS (the installed lmms_eval/tasks folder), $DATA (the mini benchmarks' parquet folder) and $PAPER
(the rendered paper/ folder, which the VisualRWKV-7 tasks build on).
Pass the folder it returns to lmms-eval as `--include_path`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from string import Template

MINI_GROUP = "visualrwkv_mini"
PAPER_GROUP = "visualrwkv_paper"
PAPER7_GROUP = "visualrwkv7_paper"
FLAVOURS = ("mini", "paper", "paper7")


def lmms_eval_tasks_dir() -> Path:
    import lmms_eval

    return Path(lmms_eval.__file__).parent / "tasks"


def render_tasks(out: str | Path, data_dir: str | Path) -> Path:
    """Write the mini and paper task YAMLs with absolute paths under `out`; returns `out`."""
    out = Path(out).resolve()
    values = {
        "LMMS_EVAL_TASKS": str(lmms_eval_tasks_dir()),
        "DATA": str(Path(data_dir).resolve()),
        "PAPER": str(out / "paper"),
    }
    for flavour in FLAVOURS:
        (out / flavour).mkdir(parents=True, exist_ok=True)
        for template in resources.files(__package__).joinpath(flavour).iterdir():
            if template.name.endswith(".yaml"):
                text = Template(template.read_text(encoding="utf-8")).substitute(values)
                (out / flavour / template.name).write_text(text, encoding="utf-8")
    return out


def prepare_mini(out: str | Path, seed: int = 0) -> Path:
    """Generate the mini benchmarks under out/data and render all task YAMLs under out/tasks."""
    from .mini_data import write_mini_benchmarks

    out = Path(out)
    write_mini_benchmarks(out / "data", seed=seed)
    return render_tasks(out / "tasks", out / "data")
