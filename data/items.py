"""The item type, the data error, and how options are written and matched (shared by every builder and adapter)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from errors import RunError
from grading import LETTERS


@dataclass
class Item:
    index: int  # position in the task's item order (0-based), stable across runs
    question: str  # full text shown to the model; multiple choice includes the lettered options, one per line
    gold: str  # canonical number, upper-case letter, option number, or (code) the test suite's name
    meta: dict = field(default_factory=dict)  # n_options, options, source id; code: entry_point, tests, ...


class DataError(RunError):
    """A data problem the user can fix; the message is one line naming the fix."""


def one_line(text: object, limit: int = 200) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[:limit - 3] + "..."


def render_options(options: list[str]) -> str:
    """Options as the model sees them: "A. text", one per line."""
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def option_text(opt: object, letter: str) -> str:
    """Option text without its own "A. " / "(A)" / "A)" prefix, so rendering does not double the letter."""
    s = str(opt).strip()
    m = re.match(r"^\(?([A-J])\s*[.):]\s*", s)
    if m and m.group(1) == letter:
        return s[m.end():].strip()
    return s


def normalize_options(raw: object) -> list[str] | None:
    """A list, or a dict keyed A, B, C..., as option texts in letter order; None for anything else."""
    if raw is None:
        return None
    if isinstance(raw, dict):
        keys = sorted(str(k).strip().upper() for k in raw)
        if keys != list(LETTERS[:len(keys)]):
            return None
        by_key = {str(k).strip().upper(): v for k, v in raw.items()}
        return [option_text(by_key[k], k) for k in keys]
    if isinstance(raw, (list, tuple)):
        return [option_text(o, LETTERS[i]) for i, o in enumerate(raw)] if 0 < len(raw) <= len(LETTERS) else None
    return None


def options_in_text(question: str, options: list[str]) -> bool:
    # Every option must appear on its own lettered line; a bare substring test fails for short options ("X").
    for i, opt in enumerate(options):
        pat = rf"^\s*\(?{LETTERS[i]}\s*[.):]\s*{re.escape(opt)}\s*$"
        if not re.search(pat, question, re.MULTILINE):
            return False
    return True


def lettered_lines(question: str) -> int:
    """How many consecutive lettered option lines (A, B, C, ...) a question text holds."""
    found = set(re.findall(r"^\s*\(?([A-J])\s*[.):]", question, re.MULTILINE))
    n = 0
    while n < len(LETTERS) and LETTERS[n] in found:
        n += 1
    return n


def text_hits(answer: str, options: list[str]) -> list[int]:
    """Options whose text EXACTLY equals answer: case-sensitive first, case-insensitive only if none. Never a
    substring test: "X" must not match "XII" (the seed's MedQA idx 155)."""
    want = answer.strip()
    hits = [i for i, o in enumerate(options) if o.strip() == want]
    if not hits:
        hits = [i for i, o in enumerate(options) if o.strip().casefold() == want.casefold()]
    return hits


def match_option_text(answer: str, options: list[str], where: str) -> str:
    """Letter of the one option whose text exactly equals answer; DataError when none or several do."""
    want = answer.strip()
    hits = text_hits(want, options)
    if len(hits) == 1:
        return LETTERS[hits[0]]
    if not hits:
        raise DataError(f"{where}: answer {one_line(want, 60)!r} matches no option text exactly; fix the gold")
    raise DataError(f"{where}: answer {one_line(want, 60)!r} matches several options "
                    f"({', '.join(LETTERS[i] for i in hits)}); fix the gold")
