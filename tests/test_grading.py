"""Answer extraction and scoring on outputs shaped like real model generations."""
from __future__ import annotations

import pytest

from code_eval import TESTS_MARK
from grading import (
    build_program,
    extract_answer,
    extract_code,
    find_boxes,
    is_correct,
    normalize_letter,
    normalize_number,
)

NUMBER_CASES = [
    # (model output, expected prediction, expected path)
    (r"16 - 3 - 4 = 9 eggs, 9 * 2 = 18 dollars. The answer is \boxed{18}.", "18", "boxed"),
    (r"First guess \boxed{12}. Wait, I forgot the muffins. Final: \boxed{18}", "18", "boxed"),
    (r"The result is $\boxed{\frac{1}{2}}$.", "0.5", "boxed"),
    (r"\boxed{-\frac{3}{4}}", "-0.75", "boxed"),
    (r"\boxed{\dfrac{10}{2}}", "5", "boxed"),
    (r"\boxed{1,000}", "1000", "boxed"),
    (r"\boxed{\$1,234,567}", "1234567", "boxed"),
    (r"\boxed{18.00}", "18", "boxed"),
    (r"\boxed{+5}", "5", "boxed"),
    (r"\boxed{-5}", "-5", "boxed"),
    (r"\boxed{−7}", "-7", "boxed"),  # unicode minus
    (r"\boxed{\$18}", "18", "boxed"),
    (r"\boxed{18 \text{ dollars}}", "18", "boxed"),
    (r"\boxed{18\text{ dollars}}", "18", "boxed"),
    (r"\boxed{25\%}", "25", "boxed"),
    (r"\boxed{x = 42}", "42", "boxed"),
    (r"\boxed{0.50}", "0.5", "boxed"),
    (r"\boxed{.5}", "0.5", "boxed"),
    (r"\boxed{2.5 \times 10^{3}}", "2500", "boxed"),
    (r"\boxed{3/4}", "0.75", "boxed"),
    (r"\fbox{7}", "7", "boxed"),
    (r"\boxed {64}", "64", "boxed"),
    (r"\boxed{1\,000}", "1000", "boxed"),
    (r"\boxed{\text{no idea}}", None, "none"),  # the model committed to a box without a number
    # No box: prose fallbacks.
    ("Janet makes 9 * 2 = 18 dollars.\nThe answer is 18.", "18", "fallback"),
    ("So the answer is $18", "18", "fallback"),
    ("**Answer:** 1,000 apples", "1000", "fallback"),
    ("Final Answer: -3", "-3", "fallback"),
    ("The answer is 5 and then I kept talking about 7 things", "5", "fallback"),
    ("#### 72", "72", "fallback"),
    ("She has 16 - 3 - 4 = 9 eggs left", "9", "fallback"),  # last number; "-4" is not read as negative
    ("<think>Let me see. 16-3-4 = 9, so 9 * 2 = 18</think>\nThe answer is 18.", "18", "fallback"),
    ("<think>\nOkay, 16 minus 3 is 13, minus 4 is 9, times 2 is", None, "none"),  # truncated think, no box
    ("reasoning that ended early </think> She sells 9 eggs for 2 each: 18", "18", "fallback"),
    (r"<think>so 9 * 2 = \boxed{18}", "18", "boxed"),  # a finished box inside an unfinished think still counts
    (r"The answer is \boxed{\frac{1}{2", None, "none"),  # truncated box: its partial digits are not an answer
    ("I cannot determine this.", None, "none"),
    ("", None, "none"),
]

LETTER_CASES = [
    (r"\boxed{B}", "B", "boxed"),
    (r"\boxed{(B)}", "B", "boxed"),
    (r"\boxed{B.}", "B", "boxed"),
    (r"\boxed{B)}", "B", "boxed"),
    (r"\boxed{b}", "B", "boxed"),
    (r"\boxed{\text{B}}", "B", "boxed"),
    (r"\boxed{\text{(C)}}", "C", "boxed"),
    (r"\boxed{\textbf{D}}", "D", "boxed"),
    (r"$\boxed{\mathrm{A}}$", "A", "boxed"),
    (r"\boxed{B) 4.2}", "B", "boxed"),  # the seed read the number 4.2 here
    (r"\boxed{B. Oral ulcers}", "B", "boxed"),
    (r"\boxed{C: X}", "C", "boxed"),
    (r"\boxed{Answer: C}", "C", "boxed"),
    (r"\boxed{\text{Option (E)}}", "E", "boxed"),
    (r"Maybe \boxed{A}. On reflection, \boxed{D}", "D", "boxed"),
    (r"\boxed{A patient}", None, "none"),  # prose in a box is not a letter
    (r"\boxed{4.2}", None, "none"),
    # No box: conservative prose fallbacks.
    ("Considering the mechanism, the answer is (C).", "C", "fallback"),
    ("The answer is C", "C", "fallback"),
    ("the answer is (c)", "C", "fallback"),
    ("Answer: D", "D", "fallback"),
    ("**Answer:** B", "B", "fallback"),
    ("The correct option is E.", "E", "fallback"),
    ("Step by step, colorectal cancer risk rises.\nC.", "C", "fallback"),
    ("Reasoning...\n(B)", "B", "fallback"),
    ("Reasoning...\n**A**", "A", "fallback"),
    ("A patient with ulcerative colitis has a raised risk. Option A is wrong, option D is unlikely.", None, "none"),
    ("A 34-year-old man presents with diarrhea.\nB cells and T cells are involved.", None, "none"),
    ("I think the answer is a bit unclear.", None, "none"),
    ("<think>\nOption A: hemolytic uremic syndrome. Option B: oral ulcers. Hmm, answer is probably", None, "none"),
    ("<think>long thoughts about option A</think>\nAnswer: C", "C", "fallback"),
    # SmolLM2 on ARC-Easy repeating the options until the token limit: the cut-off "A" is not an answer.
    ("A. gray\nB. warm\nC. long\nD. soft\n\nA. gray\nB. warm\nC. long\nD. soft\n\nA", None, "none"),
    ("A. brain cells\nB. bone cells\n\nThe correct answer is:\nC. muscle cells", "C", "fallback"),
]


# Forms a box may state its one number in (issue 9): exponents, powers, LaTeX and spaced thousands, mixed numbers.
NUMBER_FORMS = [
    (r"\boxed{5.0e2}", "500"),
    (r"\boxed{1.5E3}", "1500"),
    (r"\boxed{2e-3}", "0.002"),
    (r"\boxed{10^3}", "1000"),
    (r"\boxed{10^{3}}", "1000"),
    (r"\boxed{10^{-2}}", "0.01"),
    (r"\boxed{2^{10}}", "1024"),
    (r"\boxed{1.5 \cdot 10^{-3}}", "0.0015"),
    (r"\boxed{1 234 567}", "1234567"),
    (r"\boxed{1\,234\,567}", "1234567"),
    (r"\boxed{1\ 234}", "1234"),
    (r"\boxed{1~234}", "1234"),
    (r"\boxed{1{,}234}", "1234"),
    (r"\boxed{\$1{,}234.50}", "1234.5"),
    (r"\boxed{1 234.5}", "1234.5"),
    (r"\boxed{2\frac{1}{2}}", "2.5"),  # a mixed number, not 2 * 1/2 and not 1/2
    (r"\boxed{2 \frac{1}{2}}", "2.5"),
    (r"\boxed{-2\frac{1}{2}}", "-2.5"),
    (r"\boxed{2 1/2}", "2.5"),
    (r"\boxed{\frac12}", "0.5"),
    (r"\boxed{\frac{-3}{4}}", "-0.75"),
    (r"\boxed{{18}}", "18"),
    (r"\boxed{(18)}", "18"),
    (r"\boxed{30^\circ}", "30"),
    (r"\boxed{5 \text{km}^2}", "5"),
    (r"\boxed{3 \text{ m/s}}", "3"),
    (r"\boxed{\text{Total: } 18}", "18"),
    (r"\boxed{2 + 3 = 5}", "5"),
    (r"\boxed{x = -5}", "-5"),
]
# Boxes that state no single number: a second number, an operator, a constant or malformed grouping.
NOT_ONE_NUMBER = [
    r"\boxed{1,2345}", r"\boxed{3,5}", r"\boxed{12,34,567}", r"\boxed{0.5 123}", r"\boxed{0.1 + 0.2}",
    r"\boxed{8 \text{ or } 9}", r"\boxed{8, 9}", r"\boxed{3 \times 4}", r"\boxed{x-5}", r"\boxed{5 - x}",
    r"\boxed{x=5, y=3}", r"\boxed{2\pi}", r"\boxed{5e}", r"\boxed{\sqrt{2}}", r"\boxed{2\frac{3}{2}}",
    r"\boxed{\frac{1}{0}}", r"\boxed{10^{1000}}", r"\boxed{1e400}",
]


@pytest.mark.parametrize(("text", "pred"), NUMBER_FORMS)
def test_number_forms(text: str, pred: str) -> None:
    assert extract_answer(text, "number") == (pred, "boxed")
    assert is_correct(pred, pred, "number")


@pytest.mark.parametrize("text", NOT_ONE_NUMBER)
def test_boxes_without_one_number_are_no_answer(text: str) -> None:
    assert extract_answer(text, "number") == (None, "none")
    assert extract_answer(text, "integer") == (None, "none")


def test_measured_misreadings_score_right() -> None:
    """The issue's measurements: each box scored against the number it states (and not the one misread before)."""
    for text, gold, misread in [(r"\boxed{5.0e2}", "500", "5"), (r"\boxed{1 234 567}", "1234567", "1"),
                                (r"\boxed{1{,}234}", "1234", "1"), (r"\boxed{2\frac{1}{2}}", "2.5", "0.5"),
                                (r"\boxed{10^3}", "1000", "10")]:
        pred, _ = extract_answer(text, "number")
        assert is_correct(pred, gold, "number") and not is_correct(pred, misread, "number")
    for text, once_right in [(r"\boxed{1,2345}", "1234"), (r"\boxed{0.1 + 0.2}", "0.1"),
                             (r"\boxed{8 \text{ or } 9}", "8")]:
        pred, _ = extract_answer(text, "number")
        assert not is_correct(pred, once_right, "number")


def test_number_reading_stays_fast_on_hostile_text() -> None:
    import time
    for text in ["1,111" * 3000 + "1", "111 " * 5000, "1" * 20000, "\\frac{" * 3000, "{" * 5000 + "1" + "}" * 5000,
                 "a " * 10000 + "5", "1e" + "9" * 50, "10^{" + "9" * 50 + "}"]:
        t0 = time.perf_counter()
        normalize_number(text)
        assert time.perf_counter() - t0 < 0.5, text[:20]


@pytest.mark.parametrize(("text", "pred", "path"), NUMBER_CASES)
def test_extract_number(text: str, pred: str | None, path: str) -> None:
    assert extract_answer(text, "number") == (pred, path)


@pytest.mark.parametrize(("text", "pred", "path"), LETTER_CASES)
def test_extract_letter(text: str, pred: str | None, path: str) -> None:
    assert extract_answer(text, "letter") == (pred, path)


def test_find_boxes_nested_and_truncated() -> None:
    text = r"\boxed{\frac{1}{2}} then \fbox{\text{(C)}} and a cut \boxed{\frac{3}{"
    assert find_boxes(text) == [r"\frac{1}{2}", r"\text{(C)}"]


def test_box_with_escaped_brace() -> None:
    assert find_boxes(r"\boxed{\{1,2\}}") == [r"\{1,2\}"]


def test_extract_unknown_type_raises() -> None:
    with pytest.raises(ValueError, match="answer_type"):
        extract_answer(r"\boxed{1}", "text")


@pytest.mark.parametrize(("raw", "canon"), [
    ("18", "18"), ("18.00", "18"), ("1,000", "1000"), ("+5", "5"), ("-5", "-5"), ("$18", "18"),
    ("18 dollars", "18"), ("0.250", "0.25"), (72, "72"), (2.5, "2.5"), (3.0, "3"), ("abc", None), (None, None),
    (float("nan"), None), (True, None), ("5.0e2", "500"), ("1 234 567", "1234567"), ("0.1 + 0.2", None),
    (1e-05, "0.00001"), ("1.23456789012e-05", "0.0000123456789012"),
])
def test_normalize_number(raw: object, canon: str | None) -> None:
    assert normalize_number(raw) == canon  # type: ignore[arg-type]


@pytest.mark.parametrize(("raw", "letter"), [
    ("B", "B"), ("(b)", "B"), ("b.", "B"), (r"\text{(C)}", "C"), ("Because", None), ("a patient", None), ("K", None),
])
def test_normalize_letter(raw: str, letter: str | None) -> None:
    assert normalize_letter(raw) == letter


@pytest.mark.parametrize(("pred", "gold", "kind", "ok"), [
    ("1000", "1,000", "number", True),
    ("1,000", "1000", "number", True),
    ("18.00", "18", "number", True),
    ("18", "18.0", "number", True),
    ("-5", "-5", "number", True),
    ("5", "-5", "number", False),
    ("0.333333333333", "1/3", "number", True),
    ("1000000.0000001", "1000000", "number", True),  # within 1e-6 relative
    ("1.01", "1", "number", False),
    ("0", "0", "number", True),
    ("$18", "18", "number", True),
    (None, "18", "number", False),
    ("abc", "18", "number", False),
    ("18", "", "number", False),
    ("b", "B", "letter", True),
    ("B", "B", "letter", True),
    ("C", "B", "letter", False),
    ("(B)", "B", "letter", False),  # predictions are already normalized; raw strings are not letters
    (None, "B", "letter", False),
    ("B", "B", "weird", False),
])
def test_is_correct(pred: str | None, gold: str, kind: str, ok: bool) -> None:
    assert is_correct(pred, gold, kind) is ok


def test_is_correct_never_raises() -> None:
    for pred, gold in [(object(), "1"), ("1", None), (["1"], "1"), ("1e400", "1")]:
        assert is_correct(pred, gold, "number") in (True, False)  # type: ignore[arg-type]
        assert is_correct(pred, gold, "letter") in (True, False)  # type: ignore[arg-type]


def test_end_to_end_scoring() -> None:
    pred, _ = extract_answer(r"... so she earns \boxed{\$18.00} per day", "number")
    assert is_correct(pred, "18", "number")
    pred, _ = extract_answer(r"The factor is \boxed{\text{(C) X}}", "letter")
    assert is_correct(pred, "C", "letter")


# ------------------------------------------------------------------------------------------------ more answer types

INTEGER_CASES = [
    # (output, prediction, path, correct against gold "70")
    (r"<think>bases b > 9 ... so 21 and 49</think> The sum is \boxed{70}.", "70", "boxed", True),
    (r"\boxed{070}", "70", "boxed", True),
    (r"\boxed{70.0}", "70", "boxed", True),
    (r"\boxed{1,070}", "1070", "boxed", False),
    (r"First \boxed{49}, then on checking: \boxed{70}", "70", "boxed", True),
    (r"\boxed{\frac{140}{2}}", "70", "boxed", True),
    (r"\boxed{70.5}", "70.5", "boxed", False),  # not an integer: wrong, not rounded
    ("The answer is 70.", "70", "fallback", True),
    ("<think>\nLet me try b = 10, 11, 12 ... the sum so far is 70", None, "none", False),  # truncated think
    (r"\boxed{\text{cannot be determined}}", None, "none", False),
    ("", None, "none", False),
]


@pytest.mark.parametrize(("text", "pred", "path", "ok"), INTEGER_CASES)
def test_integer_answers(text: str, pred: str | None, path: str, ok: bool) -> None:
    assert extract_answer(text, "integer") == (pred, path)
    assert is_correct(pred, "70", "integer") is ok  # a missing answer is wrong, never an error


def test_integer_negative_and_units() -> None:
    assert extract_answer(r"\boxed{-12 \text{ cm}}", "integer") == ("-12", "boxed")
    assert is_correct("-12", "-12", "integer") and not is_correct("12", "-12", "integer")


OPTION_CASES = [
    (r"\boxed{2}", "2", "boxed"),
    (r"\boxed{(1)}", "1", "boxed"),
    (r"\boxed{Option 2}", "2", "boxed"),
    (r"\boxed{\text{2: Maria}}", "2", "boxed"),
    (r"\boxed{Maria}", "2", "boxed"),  # the option's text, matched exactly
    (r"\boxed{maria.}", "2", "boxed"),
    (r"\boxed{Sarah or Maria}", None, "none"),
    (r"\boxed{1} at first, but \boxed{2}", "2", "boxed"),
    ("So the answer is 2.", "2", "fallback"),
    ("Answer: Option 1", "1", "fallback"),
    ("Option 2 is correct because Maria got the easier cases.", "2", "fallback"),
    ("Reasoning...\n**Option 1**", "1", "fallback"),
    ("Option 1: Sarah\nOption 2: Maria\nOption 1", None, "none"),  # a repeated list cut off, not an answer
    ("Sarah was the better surgeon, so the blank is the other person.", None, "none"),
    ("The answer is 2.5 times harder", None, "none"),
]


@pytest.mark.parametrize(("text", "pred", "path"), OPTION_CASES)
def test_option_answers(text: str, pred: str | None, path: str) -> None:
    assert extract_answer(text, "option", ["Sarah", "Maria"]) == (pred, path)


def test_option_scoring() -> None:
    assert is_correct("2", "2", "option") and not is_correct("1", "2", "option")
    assert not is_correct("12", "1", "option") and not is_correct(None, "1", "option")


def test_letter_by_option_text_and_many_options() -> None:
    options = ["Hemolytic uremic syndrome", "Oral ulcers", "Colorectal cancer", "Pancreatic cancer", "Gout"]
    assert extract_answer(r"\boxed{Colorectal cancer}", "letter", options) == ("C", "boxed")
    assert extract_answer(r"\boxed{\text{(E)}}", "letter", options) == ("E", "boxed")
    assert extract_answer(r"\boxed{cancer}", "letter", options) == (None, "none")  # no substring matches
    assert extract_answer(r"\boxed{Colorectal cancer}", "letter") == (None, "none")  # no options, no guess
    assert is_correct("E", "E", "letter") and is_correct("C", "C", "letter")


CODE = "def add(a, b):\n    return a + b"

CODE_CASES = [
    # (output, code, path)
    (f"```python\n{CODE}\n```", CODE, "block"),
    (f"Plan first.\n```py\n{CODE}\n```\nExample:\n```python\nprint(add(1, 2))\n```", CODE, "block"),
    (f"```\n{CODE}\n```", CODE, "block"),  # untagged fence
    (f"```python\n{CODE}```", CODE, "block"),  # closing fence glued to the last line
    (f"<think>draft:\n```python\ndef add(a, b):\n    return 0\n```\n</think>\n```python\n{CODE}\n```", CODE, "block"),
    (f"```bash\npip install nothing\n```\n```python\n{CODE}\n```", CODE, "block"),
    (f"  ```python\n  {CODE.replace(chr(10), chr(10) + '  ')}\n  ```", CODE, "block"),  # indented block, dedented
    (f"```python\n{CODE}\n", CODE, "fallback"),  # cut off by the token limit before the closing fence
    (f"Sure.\n{CODE}\nThis adds two numbers.", CODE, "fallback"),  # unfenced
    ("```text\nnot code\n```", None, "none"),
    ("I cannot solve this.", None, "none"),
    ("", None, "none"),
]


@pytest.mark.parametrize(("text", "code", "path"), CODE_CASES)
def test_extract_code(text: str, code: str | None, path: str) -> None:
    assert extract_code(text, "add") == (code, path)


def test_extract_code_prefers_the_entry_point() -> None:
    text = "```python\ndef helper(x):\n    return x\n```\n```python\ndef add(a, b):\n    return a + b\n```\n" \
           "```python\ndef other():\n    pass\n```"
    assert extract_code(text, "add")[0] == CODE
    assert extract_code(text)[0] == "def other():\n    pass"  # without a name: the last block with a function


def test_build_program_humaneval_layouts() -> None:
    meta = {"entry_point": "add", "prompt_code": "import math\n\n\ndef add(a, b):\n    \"\"\"Add.\"\"\"\n",
            "tests": "def check(candidate):\n    assert candidate(1, 2) == 3\n\ncheck(add)"}
    whole = build_program(CODE, meta)  # a whole function: the prompt's imports, then the solution
    assert whole.startswith("import math") and whole.count("def add") == 1 and whole.endswith("check(add)\n")
    body = build_program("    return a + b", meta)  # a body: appended to the prompt's header
    assert '"""Add."""\n    return a + b' in body
    flush = build_program("return a + b", meta)  # a body written flush left is indented
    assert '"""Add."""\n    return a + b' in flush


def test_build_program_mbpp_layout() -> None:
    meta = {"entry_point": "add", "prelude": "import math", "tests": "assert add(1, 2) == 3"}
    assert build_program(CODE, meta) == f"import math\n\n{CODE}\n\n{TESTS_MARK} add\nassert add(1, 2) == 3\n"


# ------------------------------------------------------------------- issue 19: held-out strings per class
# (class, model output, answer type, expected prediction). Written beside the examples, not from them:
# several per class, and near-misses that must keep their reading.
HELD_OUT = [
    # A box inside a box: the inner box is the answer.
    ("nested", r"\boxed{\boxed{18}}", "number", "18"),
    ("nested", r"So the total is $\boxed{\boxed{\frac{1}{2}}}$.", "number", "0.5"),
    ("nested", r"\boxed{x = \boxed{7}}", "number", "7"),
    ("nested", r"\boxed{\fbox{42}}", "integer", "42"),
    ("nested", r"The answer is \boxed{\boxed{B}}", "letter", "B"),
    ("nested", r"\boxed{\text{\boxed{C}}}", "letter", "C"),
    ("nested", r"\boxed{\boxed{2}}", "option", "2"),
    ("nested-near", r"\boxed{\boxed{3} \text{ or } \boxed{4}}", "number", None),
    ("nested-near", r"cut off \boxed{\boxed{18}", "number", "18"),  # the inner box is complete
    # Two different answers in one box: no answer.
    ("two", r"\boxed{x = 3 \text{ or } x = 4}", "number", None),
    ("two", r"\boxed{x = 3 or x = 4}", "number", None),
    ("two", r"\boxed{x = -2 \quad x = 5}", "number", None),
    ("two", r"\boxed{x = 1 \text{ and } x = 2}", "integer", None),
    ("two", r"\boxed{(A) and (C)}", "letter", None),
    ("two", r"\boxed{A, C}", "letter", None),
    ("two", r"\boxed{B \text{ or } D}", "letter", None),
    ("two", r"\boxed{\text{(A) and (D)}}", "letter", None),
    ("two", r"\boxed{A/C}", "letter", None),
    ("two", r"\boxed{(1) or (2)}", "option", None),
    ("two-near", r"\boxed{2 + 3 = 5}", "number", "5"),
    ("two-near", r"\boxed{y = 2x + 1 = 7}", "number", "7"),
    ("two-near", r"\boxed{(C) X and Y}", "letter", "C"),  # the option's own text holds "and"
    ("two-near", r"\boxed{A. Aspirin and heparin}", "letter", "A"),
    ("two-near", r"\boxed{B, because it binds}", "letter", "B"),
    # Scale words: the number they scale.
    ("scale", r"\boxed{3 \text{ million}}", "number", "3000000"),
    ("scale", r"\boxed{3 million}", "number", "3000000"),
    ("scale", r"\boxed{12k}", "number", "12000"),
    ("scale", r"\boxed{\$12K}", "number", "12000"),
    ("scale", r"\boxed{1 thousand}", "number", "1000"),
    ("scale", r"\boxed{2.5 billion}", "number", "2500000000"),
    ("scale", r"\boxed{\$1.2 \text{ Million dollars}}", "number", "1200000"),
    ("scale", r"\boxed{4 thousand}", "integer", "4000"),
    ("scale", "She will have saved 3 million dollars.\nThe answer is 3 million.", "number", "3000000"),
    ("scale-near", r"\boxed{5 km}", "number", "5"),
    ("scale-near", r"\boxed{12 kg}", "number", "12"),
    ("scale-near", r"\boxed{3 m}", "number", "3"),
    ("scale-near", r"\boxed{10 kWh}", "number", "10"),
    ("scale-near", r"\boxed{2 kilometers}", "number", "2"),
    ("scale-near", r"\boxed{1,000}", "number", "1000"),
    # An expression whose value is not its leading number.
    ("expression", r"\boxed{5!}", "number", "120"),
    ("expression", r"\boxed{3!}", "integer", "6"),
    ("expression", r"\boxed{0!}", "number", "1"),
    ("expression", r"\boxed{10!}", "number", "3628800"),
    ("expression", r"\boxed{-4!}", "number", "-24"),
    ("expression-near", r"\boxed{5! = 120}", "number", "120"),
    ("expression-near", r"\boxed{5!/3!}", "number", None),
    ("expression-near", r"\boxed{2.5!}", "number", None),
    ("expression-near", r"\boxed{5!!}", "number", None),
    ("expression-near", r"\boxed{100!}", "number", None),  # 158 digits: beyond the bound
    ("expression-near", r"\boxed{18 dollars!}", "number", "18"),  # punctuation after a word
    # Option letters inside other text commands.
    ("textcmd", r"\boxed{\texttt{B}}", "letter", "B"),
    ("textcmd", r"\boxed{\emph{C}}", "letter", "C"),
    ("textcmd", r"\boxed{\textsf{(D)}}", "letter", "D"),
    ("textcmd", r"\boxed{\textsc{a}}", "letter", "A"),
    ("textcmd", r"\boxed{\underline{E}}", "letter", "E"),
    ("textcmd", r"\boxed{{\bf B}}", "letter", "B"),
    ("textcmd", r"\boxed{\mathtt{A}}", "letter", "A"),
    ("textcmd", r"\boxed{\texttt{2}}", "option", "2"),
    ("textcmd-near", r"\boxed{\emph{A patient}}", "letter", None),
    ("textcmd-near", r"\boxed{\texttt{None}}", "letter", None),
    # An option letter followed by its text inside the box.
    ("label-text", r"\boxed{b) 4.2 mol}", "letter", "B"),
    ("label-text", r"\boxed{c) Colorectal cancer}", "letter", "C"),
    ("label-text", r"\boxed{a. 12 m/s}", "letter", "A"),
    ("label-text", r"\boxed{\text{d) none of the above}}", "letter", "D"),
    ("label-text", r"\boxed{(e) Gout}", "letter", "E"),
    ("label-text-near", r"\boxed{a patient}", "letter", None),
    ("label-text-near", r"\boxed{e.g. the second}", "letter", None),
    ("label-text-near", r"\boxed{4.2 mol}", "letter", None),
    # Written after the fix and run once, unchanged (all held).
    ("nested", r"\boxed{\boxed{\text{(B)}}}", "letter", "B"),
    ("nested", r"Final: \fbox{\boxed{-3}}", "number", "-3"),
    ("nested", r"\boxed{\boxed{x} = 5}", "number", "5"),
    ("two", r"\boxed{x = 2 \text{ or } x = -2}", "number", None),
    ("two", r"\boxed{n = 4, n = 6}", "integer", None),
    ("two", r"\boxed{\text{A or C}}", "letter", None),
    ("two", r"\boxed{(B), (D)}", "letter", None),
    ("two", r"\boxed{C \text{ and } E}", "letter", None),
    ("two", r"\boxed{1 \text{ or } 2}", "option", None),
    ("scale", r"\boxed{7 million}", "number", "7000000"),
    ("scale", r"\boxed{\$4.5\text{k}}", "number", "4500"),
    ("scale", r"\boxed{20 thousand people}", "number", "20000"),
    ("scale", r"\boxed{1.25 Billion}", "number", "1250000000"),
    ("scale-near", r"\boxed{6 kilograms}", "number", "6"),
    ("scale-near", r"\boxed{9 ms}", "number", "9"),
    ("expression", r"\boxed{4!}", "integer", "24"),
    ("expression", r"\boxed{6!}", "number", "720"),
    ("expression", r"\boxed{7! \text{ ways}}", "number", "5040"),
    ("expression-near", r"\boxed{3!\cdot 2}", "number", None),
    ("textcmd", r"\boxed{\textit{D}}", "letter", "D"),
    ("textcmd", r"\boxed{\texttt{(A)}}", "letter", "A"),
    ("textcmd", r"\boxed{\emph{b}}", "letter", "B"),
    ("textcmd", r"\boxed{\textsf{C}}", "letter", "C"),
    ("label-text", r"\boxed{d) Hyperkalemia}", "letter", "D"),
    ("label-text", r"\boxed{a) 3.1 J}", "letter", "A"),
    ("label-text", r"\boxed{c. increased pressure}", "letter", "C"),
    ("label-text-near", r"\boxed{an increase}", "letter", None),
    ("label-text-near", r"\boxed{i.e. the first}", "letter", None),
]


@pytest.mark.parametrize(("kind", "text", "answer_type", "pred"), HELD_OUT,
                         ids=[f"{k}-{i}" for i, (k, *_) in enumerate(HELD_OUT)])
def test_held_out_classes(kind: str, text: str, answer_type: str, pred: str | None) -> None:
    got, path = extract_answer(text, answer_type)
    assert got == pred, (kind, text, got)
    assert path == ("none" if pred is None else "fallback" if "boxed" not in text else "boxed")
    if pred is not None:
        assert is_correct(got, pred, answer_type)


def test_two_answers_are_wrong_against_either_gold() -> None:
    for text, golds in [(r"\boxed{x = 3 \text{ or } x = 4}", ("3", "4")), (r"\boxed{(A) and (C)}", ("A", "C"))]:
        kind = "letter" if "A" in golds else "number"
        pred, _ = extract_answer(text, kind)
        assert not any(is_correct(pred, g, kind) for g in golds)
