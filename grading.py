"""Answer extraction and scoring for the number (math) and letter (multiple choice) tasks.

The seed compared raw strings taken from the first `\\boxed{...}` without nested braces, so "18.00", "1,000",
"(B)" and `\\text{B}` all scored as wrong, and a truncated think block could score by its last stray number.
Here the LAST box wins, braces are matched properly, predictions are normalized to a canonical form, numbers
are compared as numbers, and the prose fallback is deliberately conservative.
"""
from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

__all__ = ["LETTERS", "extract_answer", "find_boxes", "is_correct", "normalize_letter", "normalize_number"]

# Multiple-choice letters we accept; ten covers MMLU-Pro-style questions and the 4/5-option tasks here.
LETTERS = "ABCDEFGHIJ"

_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")

# Commands whose argument is plain text we want to keep (units, letters written as text).
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")
_SCI = re.compile(r"([-+]?\d+(?:\.\d+)?)\s*(?:\\times|\\cdot|×|\*|x)\s*10\s*\^\s*\{?\s*([-+]?\d+)\s*\}?")

# A number as written by a model: optional sign (not when glued to a preceding word or digit, so "16-3"
# yields 16 and 3, not 16 and -3), thousands separators only in well-formed groups of three.
_NUM = re.compile(r"(?:(?<![\w)\]}.])[-+−])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])[-+−]?\.\d+")
# "a/b" written as a plain fraction, whole token only.
_PLAIN_FRAC = re.compile(r"^([-+−]?\d+)\s*/\s*(\d+)$")

# Prose cue before a final number: "The answer is 18", "Answer: $18", "final answer: 18".
_NUM_CUE = re.compile(
    r"(?i:answer)(?:\s*(?i:is))?\s*[:：=]?\s*(?:\*\*)?\s*[:：]?\s*(?:\*\*)?\s*\\?\$?\s*"
    r"((?:(?<![\w)])[-+−])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)"
)
_HASHES = re.compile(r"####\s*\$?\s*([-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)")

# Prose cue before a final letter: "answer is (C)", "Answer: C", "the correct option is C". A bare "option A"
# is NOT a cue (models walk through options one by one). The keyword is case-insensitive, the letter must be
# upper case or parenthesised, so "the answer is a bit unclear" never yields "A".
_LETTER_CUE = re.compile(
    r"(?:(?i:answer)|(?i:correct|best|right)\s+(?i:option|choice))(?:\s*(?i:is))?\s*[:：]?\s*(?:\*\*)?\s*"
    r"(?:\(([A-Ja-j])\)|([A-J]))(?![\w])"
)
# A final line that is nothing but a letter: "C", "C.", "(C)", "**C**", "C)".
_LETTER_LINE = re.compile(r"^[\s*_>#`]*\(?([A-J])\)?[.)]?[\s*_`]*$")


def find_boxes(text: str) -> list[str]:
    """Contents of every complete `\\boxed{...}` / `\\fbox{...}` in order; a box cut off by truncation is skipped."""
    out: list[str] = []
    pos = 0
    while True:
        m = _BOX_START.search(text, pos)
        if m is None:
            return out
        depth = 1
        i = m.end()
        while i < len(text) and depth:
            ch = text[i]
            if ch == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
                i += 2  # an escaped brace (\{ or \}) is content, not structure
                continue
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            i += 1
        if depth:
            # Unbalanced: the generation stopped inside this box. Keep looking only after its opening brace,
            # because a later complete box could still follow in pathological text.
            pos = m.end()
            continue
        out.append(text[m.end():i - 1])
        pos = i


def _strip_text_cmds(s: str) -> str:
    # Nested \text{\textbf{B}} needs a few passes; four is more than any real output uses.
    for _ in range(4):
        new = _TEXT_CMD.sub(lambda m: m.group(1), s)
        if new == s:
            break
        s = new
    return s


def _canon(value: Fraction) -> str:
    """Canonical string: integers without a decimal point, others as a short plain decimal."""
    if value.denominator == 1:
        return str(value.numerator)
    # Terminating decimals (18.25) print exactly; others (1/3) with 12 significant digits, which the 1e-6
    # relative tolerance in is_correct absorbs.
    d = Decimal(value.numerator) / Decimal(value.denominator)
    if Fraction(d) == value:
        txt = format(d.normalize(), "f")
    else:
        txt = f"{float(value):.12g}"
    return txt


def _to_fraction(token: str) -> Fraction | None:
    token = token.replace("−", "-").replace(",", "").replace(" ", "")
    token = token.removeprefix("+")
    try:
        return Fraction(Decimal(token))
    except (InvalidOperation, ValueError):
        return None


def _number_from_math(s: str) -> Fraction | None:
    """The number a box (or an "answer is" phrase) states, or None when it states none."""
    s = _strip_text_cmds(s)
    s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", " ").replace("~", " ")
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = s.replace("\\left", "").replace("\\right", "").replace("^\\circ", "").replace("^{\\circ}", "")
    s = s.replace("−", "-").strip()
    # "x = 5" or "2 + 3 = 5": the value is what follows the last equals sign.
    if "=" in s:
        s = s.rsplit("=", 1)[1].strip()
    s = re.sub(r"(?<=\d),\s+(?=\d{3}(?!\d))", ",", s)  # "1, 000" (a model's spacing) -> "1,000"
    m = _FRAC.search(s)
    if m:
        num, den = _to_fraction(m.group(1)), _to_fraction(m.group(2))
        if num is not None and den:
            sign = -1 if s[:m.start()].strip().endswith("-") else 1
            return sign * num / den
    m = _SCI.search(s)
    if m:
        base = _to_fraction(m.group(1))
        if base is not None:
            return base * Fraction(10) ** int(m.group(2))
    m = _PLAIN_FRAC.match(s)
    if m:
        num, den = _to_fraction(m.group(1)), _to_fraction(m.group(2))
        if num is not None and den:
            return num / den
    # Otherwise the first number: units, words and exponents of units follow it ("5 \text{km}^2").
    m = _NUM.search(s)
    if m:
        return _to_fraction(m.group(0))
    return None


def normalize_number(s: str | float | None) -> str | None:
    """Canonical number string for a gold or predicted value ("1,000" -> "1000", "18.00" -> "18"), or None."""
    if s is None or isinstance(s, bool):
        return None
    if isinstance(s, int):
        return str(s)
    if isinstance(s, float):
        if not math.isfinite(s):
            return None
        return _canon(Fraction(Decimal(repr(s))))
    value = _number_from_math(str(s))
    return None if value is None else _canon(value)


def normalize_letter(s: str | None) -> str | None:
    """Upper-case option letter from a box's content ("(B)", "B.", "\\text{B}", "B) 4.2", "b"), or None."""
    if s is None:
        return None
    t = _strip_text_cmds(str(s)).replace("$", "").replace("\\(", "(").replace("\\)", ")").strip()
    t = t.strip("*_ ").strip()
    # A leading label such as "Answer: C" or "Option (B)".
    t = re.sub(r"^(?i:(?:the\s+)?(?:final\s+)?(?:answer|option|choice)\s*(?:is)?\s*[:：]?\s*)", "", t).strip()
    if len(t) == 1 and t.upper() in LETTERS:
        return t.upper()
    # Upper case letter followed by a delimiter and maybe the option's text: "B. 4.2", "(C) X", "B) 4.2".
    m = re.match(r"^\(?([A-J])\s*(?:\)|\.|:|$)", t)
    if m:
        return m.group(1)
    m = re.match(r"^\(([a-j])\)", t)  # "(b)": parentheses make a lower-case letter unambiguous
    if m:
        return m.group(1).upper()
    if re.fullmatch(r"[a-j]\s*[.)]", t):  # "b." / "b)"
        return t[0].upper()
    return None


def _answer_region(text: str) -> str | None:
    """Text where a prose (non-box) answer may sit: after the last </think>; None inside an unclosed think."""
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        # The model was cut off while still thinking: any number in there is a guess in progress, not an answer.
        return None
    return text


def _number_fallback(region: str) -> str | None:
    for pattern in (_NUM_CUE, _HASHES):
        hits = pattern.findall(region)
        if hits:
            return normalize_number(hits[-1])
    nums = _NUM.findall(region)
    return normalize_number(nums[-1]) if nums else None


def _letter_fallback(region: str) -> str | None:
    hits = list(_LETTER_CUE.finditer(region))
    if hits:
        m = hits[-1]
        return (m.group(1) or m.group(2)).upper()
    lines = [ln for ln in region.strip().splitlines() if ln.strip()]
    if lines:
        m = _LETTER_LINE.match(lines[-1])
        if m:
            return m.group(1)
    return None


def extract_answer(text: str, answer_type: str) -> tuple[str | None, str]:
    """Normalized prediction and where it came from: "boxed" (last box), "fallback" (prose) or "none".

    answer_type is "number" or "letter". When the last box exists but states no usable answer, the result is
    (None, "none"): the model committed to that box, so guessing from the prose would score it by accident.
    """
    if answer_type not in ("number", "letter"):
        raise ValueError(f"unknown answer_type {answer_type!r}; expected 'number' or 'letter'")
    if not text:
        return None, "none"
    norm = normalize_number if answer_type == "number" else normalize_letter
    boxes = find_boxes(text)
    if boxes:
        pred = norm(boxes[-1])
        return (pred, "boxed") if pred is not None else (None, "none")
    region = _answer_region(text)
    if region is None:
        return None, "none"
    start = _BOX_START.search(region)
    if start is not None:
        # No complete box exists, so this one was cut off mid-answer: its partial digits ("\frac{1}{2") must
        # not be read as the answer, and neither must anything after it.
        region = region[:start.start()]
    pred = _number_fallback(region) if answer_type == "number" else _letter_fallback(region)
    return (pred, "fallback") if pred is not None else (None, "none")


def is_correct(pred: str | None, gold: str, answer_type: str) -> bool:
    """True when pred matches gold: numbers within 1e-6 relative tolerance, letters case-insensitively."""
    try:
        if pred is None or gold is None:
            return False
        if answer_type == "letter":
            p, g = str(pred).strip().upper(), str(gold).strip().upper()
            return len(p) == 1 and p in LETTERS and p == g
        if answer_type == "number":
            p, g = _number_from_math(str(pred)), _number_from_math(str(gold))
            if p is None or g is None:
                return False
            if p == g:
                return True
            pf, gf = float(p), float(g)
            return abs(pf - gf) <= 1e-6 * max(abs(pf), abs(gf))
        return False
    except Exception:  # noqa: BLE001 - scoring must never take a run down; an unparseable pair is simply wrong
        return False
