"""Answer extraction and scoring, one path per answer type.

| type | tasks | the model writes | correct when |
|---|---|---|---|
| number | gsm8k | `\\boxed{18}` | equal as numbers (1e-6 relative); a box must state exactly one number |
| integer | aime2024, aime2025 | `\\boxed{70}` | equal integers; a missing answer is wrong, never an error |
| letter | gpqa, medqa, arc_* | `\\boxed{B}` | same letter (any option count) |
| option | winogrande | `\\boxed{1}` | same option number |
| code | humaneval(plus), mbpp(plus) | a ```python block | the program runs all its tests (code_eval.py) |

The seed compared raw strings taken from the first `\\boxed{...}` without nested braces, so "18.00", "1,000",
"(B)" and `\\text{B}` all scored as wrong, and a truncated think block could score by its last stray number.
Here the LAST box wins, braces are matched properly, predictions are normalized to a canonical form, numbers
are compared as numbers (exponents, powers, LaTeX thousands, mixed numbers, scale words, factorials; a box with a
second number or an operator is no answer: see _number_from_math), boxes inside the last box are unwrapped, two
different option labels in one box ("(A) and (C)") are no answer, and the prose fallback is deliberately
conservative. Every
extraction reports its path: "boxed", "block" (code), "fallback" (prose or unfenced code) or "none".
"""
from __future__ import annotations

import math
import re
import textwrap
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from code_eval import TESTS_MARK

__all__ = ["ANSWER_TYPES", "LETTERS", "build_program", "extract_answer", "extract_code", "find_boxes", "grade_code",
           "is_correct", "normalize_letter", "normalize_number", "normalize_option"]

ANSWER_TYPES = ("number", "integer", "letter", "option", "code")

# Multiple-choice letters we accept; ten covers MMLU-Pro-style questions and the 4/5-option tasks here.
LETTERS = "ABCDEFGHIJ"

_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")

# Commands whose argument is plain text we want to keep (units, letters written as text).
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|texttt|textsf|textsc|textup|textnormal|textmd|emph|underline|"
                       r"mathrm|mathbf|mathit|mathsf|mathtt|boldsymbol|bm|mbox|operatorname)\s*\{([^{}]*)\}")
# Old-style font switches inside a group: {\bf B}, {\tt 2}.
_FONT_SWITCH = re.compile(r"\\(?:bf|it|tt|em|sf|rm|sc)(?![A-Za-z])\s*")
# Two labels joined as alternatives or a list ("(A) and (C)", "A, C", "B or D", "A/C"): two answers, not one.
_TWO_LETTERS = re.compile(r"^\(?([A-Ja-j])\)?\s*(?:,|;|/|&|\\&|\band\b|\bor\b)\s*\(?([A-Ja-j])\)?(?!\w)")
_TWO_OPTIONS = re.compile(r"^\(?([1-9])\)?\s*(?:,|;|/|&|\\&|\band\b|\bor\b)\s*\(?([1-9])\)?(?![\w.])")

# ---- Reading the one number a box states (see _number_from_math for the accepted forms).
# LaTeX spacing (\, \; \: \ ~ and Unicode thin/no-break spaces) is a space; \! is nothing.
_SPACING = re.compile(r"\\[,;: ]|~|[\u00a0\u2009\u202f]")
# Digit groups of three separated by single spaces are thousands ("1 234 567"), made commas before reading.
_SPACED_GROUPS = re.compile(r"(?<![\d.,])\d{1,3}(?: \d{3})+(?!\d)")
# An unsigned decimal: thousands grouped by commas only in well-formed groups of three, an optional exponent.
_DEC = r"(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
_INT_EXP = r"(?:\{\s*([-+]?\d+)\s*\}|([-+]?\d+))"  # an integer exponent, braced or not
_TEX_FRAC = r"\\[dt]?frac\s*(?:\{\s*([-+]?" + _DEC + r")\s*\}\s*\{\s*([-+]?" + _DEC + r")\s*\}|(\d)\s*(\d))"
_TIMES = r"(?:\\times|\\cdot|×|·|\*|x)"
# The value's forms, tried in this order at its first character (after an optional sign).
_FORMS = [
    ("scientific", re.compile(r"(" + _DEC + r")\s*" + _TIMES + r"\s*10\s*\^\s*" + _INT_EXP)),
    ("mixed", re.compile(r"(\d+)\s*" + _TEX_FRAC)),
    ("mixed_plain", re.compile(r"(\d+)\s+(\d+)\s*/\s*(\d+)(?![\d.])")),
    ("power", re.compile(r"(" + _DEC + r")\s*\^\s*" + _INT_EXP)),
    ("fraction", re.compile(_TEX_FRAC)),
    ("ratio", re.compile(r"(" + _DEC + r")\s*/\s*(" + _DEC + r")")),
    ("decimal", re.compile(_DEC)),
]
# Where the value starts; a sign counts only when not glued to a word ("x-5" is an expression, not -5).
_VALUE_START = re.compile(r"(?:(?<![\w)\]}])(?P<sign>[-+]))?\s*(?=\d|\.\d|\\[dt]?frac)")
# Around the value only words may stand: "Total: 18", "18 dollars", "5 km^2", "3 m/s", "(18)". A digit, an
# operator or a LaTeX command there means the box states more than one number or an expression.
_PREFIX_OK = re.compile(r"[A-Za-z\s:,.'\"(\[]*")
_UNIT_POWER = re.compile(r"(?<=[A-Za-z])\s*\^\s*(?:\{\s*-?\d+\s*\}|-?\d+)")
_UNIT_RATIO = re.compile(r"(?<=[A-Za-z])\s*/\s*(?=[A-Za-z])")
_SUFFIX_OK = re.compile(r"(?:[A-Za-z]+(?:-[A-Za-z]+)*|[\s.,;:!?'\"()\[\]])*")
_CONSTANT = re.compile(r"[ei](?![A-Za-z])")  # glued "e" or "i" is a constant (5e, 2i), not a unit
# After the value: a factorial ("5!" is 120, not 5), then a scale ("3 million", "12k"; "5 km" is a unit).
_FACTORIAL = re.compile(r"\s*(!+)")
_MAX_FACTORIAL = 69  # 69! has 99 digits
_SCALE_WORDS = {"thousand": 10 ** 3, "million": 10 ** 6, "billion": 10 ** 9, "trillion": 10 ** 12, "k": 10 ** 3}
_SCALE = re.compile(r"\s*(thousand|million|billion|trillion)s?(?![A-Za-z])|([kK])(?![A-Za-z])", re.IGNORECASE)
_MAX_DIGITS = 100  # longer numbers, or powers of ten beyond 1e±100, are no answer (and would cost time to build)

# A number as written by a model: optional sign (not when glued to a preceding word or digit, so "16-3"
# yields 16 and 3, not 16 and -3), thousands separators only in well-formed groups of three.
_NUM = re.compile(r"(?:(?<![\w)\]}.])[-+−])?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|(?<![\w.])[-+−]?\.\d+")

# Prose cue before a final number: "The answer is 18", "Answer: $18", "final answer: 18".
_NUM_CUE = re.compile(
    r"(?i:answer)(?:\s*(?i:is))?\s*[:：=]?\s*(?:\*\*)?\s*[:：]?\s*(?:\*\*)?\s*\\?\$?\s*"
    r"((?:(?<![\w)])[-+−])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
    r"(?:\s*(?i:thousand|million|billion|trillion)(?![A-Za-z])|[kK](?![A-Za-z]))?)"
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

# Option numbers (winogrande): the same cues with a digit, "Option 2 is correct", or a last line "2" / "Option 2".
_OPTION_CUE = re.compile(
    r"(?:(?i:answer)|(?i:correct|best|right)\s+(?i:option|choice))(?:\s*(?i:is))?\s*[:：]?\s*(?:\*\*)?\s*"
    r"(?:(?i:option|choice)\s*)?\(?([1-9])\)?(?!\w|\.\d)"
)
_OPTION_IS = re.compile(
    r"(?i:option|choice)\s*\(?([1-9])\)?\s+(?i:is)\s+(?:(?i:the)\s+)?(?i:correct|right|best|answer)")
_OPTION_LINE = re.compile(r"^[\s*_>#`]*(?:(?i:option|choice)\s*)?\(?([1-9])\)?[.)]?[\s*_`]*$")
# A line of an option list ("D. soft", "Option 2: Maria"). A bare label right after one is the start of the next
# list entry cut off by the token limit (small models repeat the options until they run out of tokens), not an
# answer, so the last-line rule does not fire there.
_LISTED = re.compile(r"^[\s*_>#`]*(?:(?i:option|choice)\s*)?\(?(?:[A-J]|[1-9])\s*[.):]\s*\S")

# Code: fenced blocks (the closing fence at a line start, or glued to the last code line), python or untagged.
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+.#-]*)[^\n]*\n(.*?)(?:^[ \t]*```|```[ \t]*$)", re.DOTALL | re.MULTILINE)
_OPEN_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+.#-]*)[^\n]*\n", re.MULTILINE)
_PY_LANGS = ("python", "py", "python3", "")
_CODE_START = re.compile(r"^(?:def |class |import |from \S+ import |@)")
_CODE_TOPLEVEL = re.compile(r"^(?:def |class |import |from |@|#|if |for |while |try:|except|return |"
                            r"[A-Za-z_][\w.\[\], ]*\s*(?:=|\())")


def _group_end(text: str, i: int) -> int | None:
    """Index just past the brace that closes the group opened before text[i], or None when it never closes."""
    depth = 1
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
    return None if depth else i


def find_boxes(text: str) -> list[str]:
    """Contents of every complete `\\boxed{...}` / `\\fbox{...}` in order; a box cut off by truncation is skipped."""
    out: list[str] = []
    pos = 0
    while True:
        m = _BOX_START.search(text, pos)
        if m is None:
            return out
        end = _group_end(text, m.end())
        if end is None:
            # Unbalanced: the generation stopped inside this box. Keep looking only after its opening brace,
            # because a later complete box could still follow in pathological text.
            pos = m.end()
            continue
        out.append(text[m.end():end - 1])
        pos = end


def _unbox(content: str, most: int = 8) -> str:
    """A box's content with the boxes inside it unwrapped: \\boxed{\\boxed{18}} states 18, and
    \\boxed{\\boxed{3} or \\boxed{4}} states two numbers. At most `most` inner boxes (hostile text stays cheap)."""
    for _ in range(most):
        m = _BOX_START.search(content)
        end = _group_end(content, m.end()) if m else None
        if end is None:
            break
        content = content[:m.start()] + content[m.end():end - 1] + content[end:]
    return content


def _strip_text_cmds(s: str) -> str:
    s = _FONT_SWITCH.sub("", s)
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
    """An exact value for a decimal token ("1,234.5", "-5.0e2"), or None beyond _MAX_DIGITS or 1e±_MAX_DIGITS."""
    token = token.replace("−", "-").replace(",", "").replace(" ", "").removeprefix("+")
    try:
        value = Decimal(token)
    except InvalidOperation:
        return None
    if not value.is_finite() or len(value.as_tuple().digits) > _MAX_DIGITS or abs(value.adjusted()) > _MAX_DIGITS:
        return None
    return Fraction(value)


def _power(base: Fraction | None, exponent: str) -> Fraction | None:
    """base ** exponent for an integer exponent, or None when that is undefined or absurdly large."""
    exp = int(exponent)
    if base is None or (base == 0 and exp < 0) or abs(exp) > _MAX_DIGITS:
        return None
    if base != 0 and abs(exp) * math.log10(max(abs(base), 1 / abs(base))) > _MAX_DIGITS:
        return None
    return base ** exp


def _ratio(num: Fraction | None, den: Fraction | None) -> Fraction | None:
    return None if num is None or not den else num / den


def _tex_fraction(groups: tuple) -> Fraction | None:
    """\\frac{a}{b} from its braced groups, or \\frac12 from its two digits."""
    a, b, short_a, short_b = groups
    return _ratio(_to_fraction(a or short_a), _to_fraction(b or short_b))


def _mixed(whole: str, num: Fraction | None, den: Fraction | None) -> Fraction | None:
    """2 1/2 = 2.5: a whole number and a proper fraction of whole numbers; anything else is ambiguous."""
    if num is None or not den or num.denominator != 1 or den.denominator != 1 or not 0 <= num < den:
        return None
    return int(whole) + num / den


def _form_value(form: str, m: re.Match) -> Fraction | None:
    g = m.groups()
    if form == "scientific":
        mantissa, scale = _to_fraction(g[0]), _power(Fraction(10), g[1] or g[2])
        return None if mantissa is None or scale is None else mantissa * scale
    if form == "mixed":
        return _mixed(g[0], *(_to_fraction(x) for x in (g[1] or g[3], g[2] or g[4])))
    if form == "mixed_plain":
        return _mixed(g[0], Fraction(int(g[1])), Fraction(int(g[2])))
    if form == "power":
        return _power(_to_fraction(g[0]), g[1] or g[2])
    if form == "fraction":
        return _tex_fraction(g)
    if form == "ratio":
        return _ratio(_to_fraction(g[0]), _to_fraction(g[1]))
    return _to_fraction(m.group(0))


def _clean_math(s: str) -> str:
    """Box content reduced to plain text: text commands unwrapped, spacing, currency, %, degrees and \\left/\\right
    removed, LaTeX thousands separators ({,} and spaced groups) made commas."""
    s = _strip_text_cmds(s)
    s = s.replace("\\!", "").replace("{,}", ",").replace("−", "-")
    s = _SPACING.sub(" ", s)
    for junk in ("\\$", "$", "€", "£", "¥", "₹", "\\%", "%", "\\left", "\\right", "\\displaystyle", "^\\circ",
                 "^{\\circ}", "\\degree", "°", "\\approx"):
        s = s.replace(junk, " ")
    s = " ".join(s.split())
    for _ in range(3):  # "{18}" or "{{18}}": redundant groups around the whole content
        if not (s.startswith("{") and s.endswith("}") and _balanced(s[1:-1])):
            break
        s = s[1:-1].strip()
    s = re.sub(r"(?<=\d),\s+(?=\d{3}(?!\d))", ",", s)  # "1, 000" (a model's spacing) -> "1,000"
    return _SPACED_GROUPS.sub(lambda m: m.group(0).replace(" ", ","), s)


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += (ch == "{") - (ch == "}")
        if depth < 0:
            return False
    return depth == 0


def _after_equals(s: str) -> str | None:
    """The value side of "x = 5" or "2 + 3 = 5": after the last "=". None for two assignments ("x=5, y=3",
    "x = 3 or x = 4", "x = 1 \\quad x = 2")."""
    parts = s.split("=")
    if any(re.search(r",\s*[A-Za-z]|;|\b(?:and|or)\b|\\q?quad", middle) for middle in parts[1:-1]):
        return None
    return parts[-1].strip()


def _number_from_math(s: str) -> Fraction | None:
    """The one number a box (or an "answer is" phrase) states, or None when it states none or several.

    Accepted: 18, -5, +5, .5, 18.00, 1,000 (well-formed groups only), 1 234 567, 1{,}234, 1\\,234, 5.0e2, 10^3,
    10^{-2}, 2.5 \\times 10^{3}, \\frac{1}{2}, \\frac12, 3/4, 2\\frac{1}{2} and 2 1/2 (mixed: 2.5), with "$", "%",
    degrees, words and units around it (18 dollars, 5 km^2, Total: 18) and anything before a last "=", a factorial
    (5! = 120) and a scale (3 million, 12k). Refused: a second number or an operator (0.1 + 0.2, 8 or 9, 2\\pi,
    3 \\times 4, 5!/3!), two assignments (x = 3 or x = 4), malformed groups (1,2345; 3,5).
    """
    s = _after_equals(_clean_math(s))
    if not s:
        return None
    start = _VALUE_START.search(s)
    if start is None or not _PREFIX_OK.fullmatch(s[:start.start()]):
        return None
    sign = -1 if start.group("sign") == "-" else 1
    for form, pattern in _FORMS:
        m = pattern.match(s, start.end())
        if m is None:
            continue
        value, rest = _factorial_and_scale(_form_value(form, m), s[m.end():])
        rest = _UNIT_RATIO.sub(" ", _UNIT_POWER.sub("", rest))
        if value is None or not _SUFFIX_OK.fullmatch(rest) or _CONSTANT.match(rest):
            return None
        return sign * value
    return None


def _factorial_and_scale(value: Fraction | None, rest: str) -> tuple[Fraction | None, str]:
    """Apply what follows the value: "5!" is 120 (whole numbers up to _MAX_FACTORIAL, else no answer), then
    "3 million" and "12k" scale it. Returns the value and what is left after them."""
    fact = _FACTORIAL.match(rest)
    if fact and value is not None:
        if len(fact.group(1)) > 1 or value.denominator != 1 or not 0 <= value <= _MAX_FACTORIAL:
            return None, rest  # 5!! (a double factorial), 2.5!, 100!: no answer
        value, rest = Fraction(math.factorial(int(value))), rest[fact.end():]
    scale = _SCALE.match(rest)
    if scale and value is not None:
        value, rest = value * _SCALE_WORDS[(scale.group(1) or scale.group(2)).lower()], rest[scale.end():]
    return value, rest


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
    t = t.strip("{} ")
    if len(t) == 1 and t.upper() in LETTERS:
        return t.upper()
    two = _TWO_LETTERS.match(t)
    if two and two.group(1).upper() != two.group(2).upper():
        return None  # "(A) and (C)": two different answers
    # Upper case letter followed by a delimiter and maybe the option's text: "B. 4.2", "(C) X", "B) 4.2", "B, as".
    m = re.match(r"^\(?([A-J])\s*(?:\)|\.|:|,|$)", t)
    if m:
        return m.group(1)
    m = re.match(r"^\(([a-j])\)", t)  # "(b)": parentheses make a lower-case letter unambiguous
    if m:
        return m.group(1).upper()
    # "b." / "b)" alone, or followed by the option's text ("b) 4.2 mol"); "e.g." is not a label.
    m = re.match(r"^([a-j])\s*[.)](?:\s+\S|\s*$)", t)
    return m.group(1).upper() if m else None


def normalize_option(s: str | None) -> str | None:
    """Option number from a box's content ("2", "(2)", "2.", "Option 2", "\\text{2: Maria}"), or None."""
    if s is None:
        return None
    t = _strip_text_cmds(str(s)).replace("$", "").replace("\\(", "(").replace("\\)", ")").strip()
    t = t.strip("*_ ").strip()
    t = re.sub(r"^(?i:(?:the\s+)?(?:final\s+)?(?:answer|option|choice)\s*(?:is)?\s*[:：]?\s*)", "", t).strip()
    t = re.sub(r"^(?i:(?:option|choice)\s*)", "", t).strip("{} ")
    two = _TWO_OPTIONS.match(t)
    if two and two.group(1) != two.group(2):
        return None  # "(1) or (2)": two different answers
    m = re.match(r"^\(?([1-9])\s*(?:\)|\.(?!\d)|:|$)", t)
    return m.group(1) if m else None


def _label_by_text(content: str, options: list[str], answer_type: str) -> str | None:
    """The label of the one option whose text the box holds exactly (case-insensitive): \\boxed{Maria}."""
    t = _strip_text_cmds(content).replace("$", "").strip().strip("*_ .").strip().casefold()
    hits = [i for i, o in enumerate(options) if str(o).strip().strip(".").casefold() == t]
    if len(hits) != 1:
        return None
    return LETTERS[hits[0]] if answer_type == "letter" else str(hits[0] + 1)


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


def _last_line_label(region: str, pattern: re.Pattern) -> re.Match | None:
    """A final line that is nothing but a label, unless it follows a line of an option list."""
    lines = [ln for ln in region.strip().splitlines() if ln.strip()]
    if not lines or (len(lines) > 1 and _LISTED.match(lines[-2])):
        return None
    return pattern.match(lines[-1])


def _letter_fallback(region: str) -> str | None:
    hits = list(_LETTER_CUE.finditer(region))
    if hits:
        m = hits[-1]
        return (m.group(1) or m.group(2)).upper()
    m = _last_line_label(region, _LETTER_LINE)
    return m.group(1) if m else None


def _option_fallback(region: str) -> str | None:
    hits = [(m.start(), m.group(1)) for p in (_OPTION_CUE, _OPTION_IS) for m in p.finditer(region)]
    if hits:
        return max(hits)[1]
    m = _last_line_label(region, _OPTION_LINE)
    return m.group(1) if m else None


_NORMALIZERS = {"number": normalize_number, "integer": normalize_number, "letter": normalize_letter,
                "option": normalize_option}
_FALLBACKS = {"number": _number_fallback, "integer": _number_fallback, "letter": _letter_fallback,
              "option": _option_fallback}


def extract_answer(text: str, answer_type: str, options: list[str] | None = None) -> tuple[str | None, str]:
    """Normalized prediction and where it came from: "boxed" (last box), "fallback" (prose) or "none".

    answer_type is "number", "integer", "letter" or "option" (code answers go through extract_code). options, when
    given for letter/option tasks, lets a box that holds exactly one option's text (\\boxed{Maria}) count as that
    option. When the last box exists but states no usable answer, the result is (None, "none"): the model
    committed to that box, so guessing from the prose would score it by accident.
    """
    if answer_type not in _NORMALIZERS:
        raise ValueError(f"unknown answer_type {answer_type!r}; expected one of {', '.join(_NORMALIZERS)} "
                         "(code: use extract_code)")
    if not text:
        return None, "none"
    boxes = find_boxes(text)
    if boxes:
        content = _unbox(boxes[-1])
        pred = _NORMALIZERS[answer_type](content)
        if pred is None and options and answer_type in ("letter", "option"):
            pred = _label_by_text(content, options, answer_type)
        return (pred, "boxed") if pred is not None else (None, "none")
    region = _answer_region(text)
    if region is None:
        return None, "none"
    start = _BOX_START.search(region)
    if start is not None:
        # No complete box exists, so this one was cut off mid-answer: its partial digits ("\frac{1}{2") must
        # not be read as the answer, and neither must anything after it.
        region = region[:start.start()]
    pred = _FALLBACKS[answer_type](region)
    return (pred, "fallback") if pred is not None else (None, "none")


def is_correct(pred: str | None, gold: str, answer_type: str) -> bool:
    """True when pred matches gold: numbers within 1e-6 relative tolerance, integers exactly, letters and option
    numbers as labels. Never raises: a missing or unparseable prediction is simply wrong."""
    try:
        if pred is None or gold is None:
            return False
        if answer_type == "letter":
            p, g = str(pred).strip().upper(), str(gold).strip().upper()
            return len(p) == 1 and p in LETTERS and p == g
        if answer_type == "option":
            p, g = str(pred).strip(), str(gold).strip()
            return len(p) == 1 and p.isdigit() and p == g
        if answer_type in ("number", "integer"):
            p, g = _number_from_math(str(pred)), _number_from_math(str(gold))
            if p is None or g is None:
                return False
            if answer_type == "integer":
                return p.denominator == 1 and p == g
            if p == g:
                return True
            pf, gf = float(p), float(g)
            return abs(pf - gf) <= 1e-6 * max(abs(pf), abs(gf))
        return False
    except Exception:  # noqa: BLE001 - scoring must never take a run down; an unparseable pair is simply wrong
        return False


# ----------------------------------------------------------------------------------------------------------------
# Code


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^\s*def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def _pick_block(blocks: list[tuple[str, str]], entry_point: str | None) -> str:
    """Among (lang, body) blocks: the last that defines the entry point, else the last with any function, else the
    last python-tagged one, else the last. A trailing usage example (`print(f(3))`) is thus not taken for the
    solution."""
    for test in ((lambda b: _defines(b, entry_point)) if entry_point else None, lambda b: "def " in b):
        if test is None:
            continue
        hits = [b for _, b in blocks if test(b)]
        if hits:
            return hits[-1]
    tagged = [b for lang, b in blocks if lang]
    return (tagged or [b for _, b in blocks])[-1]


def _bare_code(region: str) -> str | None:
    """Unfenced code: from the first line that starts a definition or import, while lines still look like code."""
    lines = region.splitlines()
    start = next((i for i, ln in enumerate(lines) if _CODE_START.match(ln)), None)
    if start is None:
        return None
    keep = []
    for ln in lines[start:]:
        if ln.strip() and not ln[0].isspace() and not _CODE_TOPLEVEL.match(ln):
            break
        keep.append(ln)
    code = "\n".join(keep).strip("\n")
    return code or None


def extract_code(text: str, entry_point: str | None = None) -> tuple[str | None, str]:
    """The solution code in a model output and where it came from: "block" (a complete ```python or ``` block),
    "fallback" (a block cut off by the token limit, or unfenced code) or "none".

    Blocks written inside a think block count (like boxes do), since a complete block is a finished answer.
    """
    if not text:
        return None, "none"
    blocks, last_end = [], 0
    for m in _FENCE.finditer(text):
        lang, body = m.group(1).lower(), textwrap.dedent(m.group(2)).strip("\n")
        last_end = m.end()
        if lang in _PY_LANGS and body.strip():
            blocks.append((lang, body))
    if blocks:
        return _pick_block(blocks, entry_point), "block"
    opened = [m for m in _OPEN_FENCE.finditer(text, last_end) if m.group(1).lower() in _PY_LANGS]
    if opened:
        body = textwrap.dedent(text[opened[-1].end():]).strip("\n")
        return (body, "fallback") if body.strip() else (None, "none")
    region = _answer_region(text)
    code = _bare_code(region) if region is not None else None
    return (code, "fallback") if code else (None, "none")


def build_program(code: str, meta: dict) -> str:
    """The program the sandbox runs for one code item: what the solution needs before it (the task's imports or
    setup, and for HumanEval-style prompts the prompt's own imports and helpers), the solution, then the tests.

    meta keys (set by data/builders.py): tests (required), prelude, prompt_code (the function header the model was
    asked to complete) and entry_point. A body-only answer to a HumanEval prompt is appended to the prompt's header.
    The tests follow a TESTS_MARK line naming the entry point: the sandbox runs them with pristine builtins.
    """
    entry, prompt = meta.get("entry_point"), meta.get("prompt_code")
    parts = [meta.get("prelude") or ""]
    if prompt and entry and not _defines(code, entry):
        body = code if code[:1].isspace() else textwrap.indent(code, "    ")
        parts.append(prompt.rstrip("\n") + "\n" + body)
    else:
        if prompt and entry:
            m = re.search(rf"^def\s+{re.escape(entry)}\s*\(", prompt, re.MULTILINE)
            parts.append(prompt[:m.start()] if m else "")
        parts.append(code)
    parts.append(f"{TESTS_MARK} {entry or ''}".rstrip() + "\n" + meta["tests"].strip("\n"))
    return "\n\n".join(p.strip("\n") for p in parts if p.strip()) + "\n"


def grade_code(outputs: list[str], metas: list[dict], *, workers: int | None = None,
               timeout_s: float | None = None, memory_mb: int | None = None) -> list[dict]:
    """Extract, assemble and run every output's code in the sandbox, `workers` at a time. One dict per output:
    prediction (the code or None), correct, extraction (path) and execution (status, detail, time_s, ...)."""
    import code_eval  # here: only code tasks need the sandbox

    found = [extract_code(o, m.get("entry_point")) for o, m in zip(outputs, metas)]
    programs = [build_program(code, m) if code else None for (code, _), m in zip(found, metas)]
    results = code_eval.evaluate_many(programs, workers=workers, timeout_s=timeout_s or code_eval.DEFAULT_TIMEOUT_S,
                                      memory_mb=memory_mb or code_eval.DEFAULT_MEMORY_MB)
    return [{"prediction": code, "correct": res.passed, "extraction": path, "execution": res.to_record()}
            for (code, path), res in zip(found, results)]
