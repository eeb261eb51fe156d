"""Items from rows, one builder per answer type (registry.TaskSpec.answer_type). A row is a dict in one of the
layouts docs/tasks.md lists; a task whose source stores something else declares an adapter (data/adapters.py) that
turns its rows into one of these layouts first.

Every item carries a normalized gold: a canonical number string (number, integer), an upper-case letter (letter),
an option number "1".."n" (option), or for code the name of its test suite, with the tests in meta. An item whose
gold cannot be resolved is a DataError naming the item, never a silent mislabel (the seed kept the previous item's
answer when a MedQA option did not match, and matched by substring).
"""
from __future__ import annotations

import builtins
import random
import re
from collections.abc import Callable
from typing import Any

from data.items import (
    DataError,
    Item,
    lettered_lines,
    match_option_text,
    normalize_options,
    one_line,
    options_in_text,
    render_options,
    text_hits,
)
from grading import LETTERS, normalize_letter, normalize_number

QUESTION_KEYS = ("question", "query", "problem", "Question")
GOLD_KEYS = ("gold", "answer", "answer_idx", "label")
GPQA_RAW_KEYS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
META_KEY = "_meta"  # an adapter's extra meta for the item (say, the source's document index)

# One builder per answer type, each (row, index, where, seed, n_options) -> Item: `where` names the row in messages,
# seed places permuted options (GPQA columns), n_options is the task's option count for rows that show none.


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
    for key in GOLD_KEYS:
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
            hits = text_hits(text, options)
            if len(hits) > 1:
                return match_option_text(text, options, where)  # raises: several options carry this text
            by_text = LETTERS[hits[0]] if hits else None
            letter = normalize_letter(text) if len(text) <= 3 else None
            if letter and n_options and LETTERS.index(letter) >= n_options:
                letter = None
            if by_text and letter and by_text != letter:
                raise DataError(f"{where}: answer {text!r} is both option {by_text}'s text and letter {letter}; "
                                "fix the gold")
            if by_text or letter:
                return by_text or letter  # type: ignore[return-value]
            return match_option_text(text, options, where)  # raises with the precise reason
        letter = normalize_letter(text) if len(text) <= 3 else None
        if letter is not None:
            if n_options and LETTERS.index(letter) >= n_options:
                raise DataError(f"{where}: gold letter {letter} is outside the {n_options} options; fix the gold")
            return letter
        if options:
            return match_option_text(text, options, where)
        raise DataError(f"{where}: {key}={one_line(text, 60)!r} is neither a letter nor an option text; fix the gold")
    raise DataError(f"{where}: no gold (expected one of {', '.join(GOLD_KEYS)}; found: {', '.join(map(str, rec))})")


def letter_item(rec: dict, index: int, where: str, seed: int = 0, n_options: int | None = None) -> Item:
    """Map one multiple-choice record of any supported layout to an Item; n_options: the option count of a row
    that shows neither an options field nor lettered lines (GPQA's stored texts)."""
    if isinstance(rec.get("choices"), dict) and "text" in rec["choices"]:
        rec = _arc_record(rec, where)
    if all(k in rec for k in GPQA_RAW_KEYS):
        q = rec.get("Question") or rec.get("question")
        if not q:
            raise DataError(f"{where}: GPQA layout without a Question field; found: {', '.join(map(str, rec))}")
        rec_id = str(rec.get("Record ID") or index)
        return _permuted_item(index, str(q), rec["Correct Answer"], [rec[k] for k in GPQA_RAW_KEYS[1:]], seed,
                              rec_id, where)
    # The seed's medqa.json has both "question" (options printed twice) and "query" (options once): use query.
    keys = ("query",) + QUESTION_KEYS if ("query" in rec and "options" in rec) else QUESTION_KEYS
    qkey = next((k for k in keys if rec.get(k)), None)
    if qkey is None:
        raise DataError(f"{where}: no question (expected one of {', '.join(QUESTION_KEYS)}; "
                        f"found: {', '.join(map(str, rec))})")
    question = str(rec[qkey]).strip()
    raw_opts = rec.get("options", rec.get("choices"))
    options = normalize_options(raw_opts)
    if raw_opts is not None and options is None:
        raise DataError(f"{where}: options must be a list or an A, B, C... dict; got {type(raw_opts).__name__}")
    if options is not None:
        n_options = len(options)
        if not options_in_text(question, options):
            question = f"{question}\n{render_options(options)}"
    else:
        n_options = lettered_lines(question) or n_options
        if not n_options:
            raise DataError(f"{where}: no options field and no lettered option lines in the question; add options")
    gold = _letter_gold(rec, options, n_options, where)
    meta: dict[str, Any] = {"n_options": n_options, "source_id": where}
    if options is not None:
        meta["options"] = options
    return Item(index, question, gold, meta)


def number_item(rec: dict, index: int, where: str, seed: int = 0, n_options: int | None = None) -> Item:
    qkey = next((k for k in QUESTION_KEYS if rec.get(k)), None)
    if qkey is None:
        raise DataError(f"{where}: no question (expected one of {', '.join(QUESTION_KEYS)}; "
                        f"found: {', '.join(map(str, rec))})")
    gkey = next((k for k in GOLD_KEYS if k in rec and rec[k] is not None and str(rec[k]).strip() != ""), None)
    if gkey is None:
        raise DataError(f"{where}: no gold (expected one of {', '.join(GOLD_KEYS)}; "
                        f"found: {', '.join(map(str, rec))})")
    val = rec[gkey]
    gold = normalize_number(val) if isinstance(val, (int, float)) else _gsm8k_gold(val)
    if gold is None:
        raise DataError(f"{where}: {gkey}={one_line(val, 60)!r} is not one number (nor a '#### N' solution); "
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
    out = {k: v for k, v in rec.items() if k not in ("choices", "answerKey", *GOLD_KEYS)}
    out.update(options=texts, gold=LETTERS[labels.index(key)])
    return out


def option_item(rec: dict, index: int, where: str, seed: int = 0, n_options: int | None = None) -> Item:
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


def _called_names(tests: list[str], skip: frozenset = _NOT_ENTRY) -> list[str]:
    names: list[str] = []
    for m in re.finditer(r"(?<![\w.])([A-Za-z_]\w*)\s*\(", "\n".join(tests)):
        if m.group(1) not in names and m.group(1) not in skip:
            names.append(m.group(1))
    return names


def code_item(rec: dict, index: int, where: str, seed: int = 0, n_options: int | None = None) -> Item:
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
        # A reference may define a builtin's name (Mbpp/126 writes `sum`): that is the entry point then, so the
        # sandbox lets the tests call the solution's `sum` rather than the builtin.
        entry = next((n for n in called if n in defined), None) or \
            next((n for n in _called_names(tests, frozenset()) if n in defined), called[0] if called else None)
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


def integer_item(rec: dict, index: int, where: str, seed: int = 0, n_options: int | None = None) -> Item:
    item = number_item(rec, index, where)
    if not re.fullmatch(r"-?\d+", item.gold):
        raise DataError(f"{where}: gold {item.gold} is not an integer; fix the gold")
    return item


BUILDERS: dict[str, Callable[..., Item]] = {"number": number_item, "integer": integer_item, "letter": letter_item,
                                            "option": option_item, "code": code_item}


def build_items(answer_type: str, rows: list, *, seed: int, label: str, keys: list[str] | None = None,
                n_options: int | None = None, adapter: Callable[[dict, str], dict] | None = None) -> list[Item]:
    """Items of one source's rows: each row (through the task's adapter, if any) by its answer type's builder.
    Messages name a row as "<label> <key>" (keys: "doc 7", ...) or "<label> item <i>"."""
    build = BUILDERS[answer_type]
    out = []
    for i, rec in enumerate(rows):
        where = f"{label} {keys[i]}" if keys else f"{label} item {i}"
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected an object with named fields, got {type(rec).__name__}")
        if adapter is not None:
            rec = adapter(rec, where)
        extra = rec.get(META_KEY) or {}
        item = build({k: v for k, v in rec.items() if k != META_KEY} if extra else rec, i, where, seed, n_options)
        item.meta.update(extra)
        out.append(item)
    return out
