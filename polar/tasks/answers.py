"""Answer extraction and equivalence: pull a final answer out of generated text and compare it to a reference.

Three answer kinds (see ``schema.ANSWER_KINDS``): plain numbers (GSM8K-style word problems), MATH-style LaTeX
expressions, and multiple-choice letters A-J. Everything here is pure string/``Fraction`` work: no sympy, so a
comparison is fast, deterministic and never hangs on a hostile expression.
"""

from __future__ import annotations

import re
from fractions import Fraction

from polar.tasks.schema import ANSWER_KINDS

__all__ = [
    "answer_line",
    "answer_of",
    "extract_answer",
    "format_number",
    "grade",
    "gsm8k_reference",
    "is_equivalent",
    "last_boxed",
    "math_reference",
    "normalize_math",
    "normalize_number",
]

# A number token: optional sign (only when not glued to a preceding digit/word, so "16-3" is 16 and 3), thousands
# groups or plain digits, optional decimals and exponent, optional "/denominator".
_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+"
_NUMBER_RE = re.compile(
    rf"(?<![\w.])(?:(?<![\w)\]])[-+\u2212])?(?:{_UNSIGNED})(?:\s*/\s*(?:{_UNSIGNED}))?",
)
_ANSWER_PHRASE_RE = re.compile(r"(?i:(?:final\s+)?answer\s*(?:is|:|=)\s*:?)")
_REL_TOL = Fraction(1, 10**6)


# ---------------------------------------------------------------- numbers


def _parse_number(text: str, allow_units: bool) -> Fraction | None:
    """Parse one number, tolerating "$", "%", thousands commas and (optionally) trailing unit words."""
    s = text.strip().replace("\u2212", "-")
    s = re.sub(r"^(?:\\?\$|[£€¥])\s*", "", s)  # currency prefix
    sign = ""
    if s and s[0] in "+-":
        sign, s = s[0], s[1:].strip()
        s = re.sub(r"^(?:\\?\$|[£€¥])\s*", "", s)  # "-$5"
    if s.startswith("(") and s.endswith(")"):  # "-(1/3)", "(5)"
        s = s[1:-1].strip()
    m = _NUMBER_RE.match(s)
    if m is None or (sign and s[0] in "+-"):  # "--5" is not a number
        return None
    rest = s[m.end() :].strip()
    rest = re.sub(r"^\\?%", "", rest).strip()
    if rest and not allow_units:
        return None
    # A unit is words or a parenthesised note with no digits: "9 (apples)", "12 dollars". "6th", "3:30" are not.
    if rest and (re.search(r"\d", rest) or s[m.end()].isalnum() or rest[0] in "/.:"):
        return None
    value = _token_value(m.group(0))
    if value is None:
        return None
    return -value if sign == "-" else value


def _token_value(token: str) -> Fraction | None:
    """The exact value of one ``_NUMBER_RE`` match; None for a zero denominator."""
    token = re.sub(r"[,\s]", "", token).replace("\u2212", "-")
    num, _, den = token.partition("/")
    try:
        value = Fraction(num)
        return value / Fraction(den) if den else value
    except (ValueError, ZeroDivisionError):
        return None


def normalize_number(text: str) -> Fraction | None:
    """Read a single numeric answer exactly.

    Args:
        text: e.g. "1,234", "-3.5", "3/4", "$18", "50%", "9 (apples)", "12 dollars", "\\frac{3}{4}".
    Returns:
        The exact value, or None when the text is not one number.
    """
    if text is None:
        return None
    value = _parse_number(text, allow_units=True)
    if value is None and "\\" in text:  # LaTeX such as "\frac{3}{4}" or "18\text{ dollars}"
        value = _math_number(normalize_math(text))
    return value


def format_number(value: Fraction) -> str:
    """Render a value canonically: "18", "-0.75", "1/3" (exact decimals when finite, else a fraction)."""
    if value.denominator == 1:
        return str(value.numerator)
    twos = fives = 0
    den = value.denominator
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    if den != 1:  # not a finite decimal
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)  # value * 10**places is an integer: render it exactly
    scaled = abs(value.numerator) * (10**places // value.denominator)
    digits = str(scaled).rjust(places + 1, "0")
    text = f"{digits[:-places]}.{digits[-places:]}".rstrip("0").rstrip(".")
    return f"-{text}" if value < 0 else text


def _numbers(text: str) -> list[str]:
    return [m.group(0) for m in _NUMBER_RE.finditer(text.replace("\u2212", "-"))]


def _first_number(text: str) -> str | None:
    for token in _numbers(text):
        value = _token_value(token)
        if value is not None:
            return format_number(value)
    return None


def _last_number(text: str) -> str | None:
    for token in reversed(_numbers(text)):
        value = _token_value(token)
        if value is not None:
            return format_number(value)
    return None


# ---------------------------------------------------------------- boxed / LaTeX


def _boxed_spans(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces) and ``\\boxed 5``, in order."""
    spans = []
    for m in re.finditer(r"\\(?:boxed|fbox)(?![a-zA-Z])", text):
        i = m.end()
        if text[i : i + 1] == "{":
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        spans.append(text[i + 1 : j])
                        break
            # an unclosed brace is a truncated generation: nothing usable
        else:
            short = re.match(r"\s+([^\s$]+)", text[i:])
            if short:
                spans.append(short.group(1))
    return spans


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{}`` (or ``\\fbox{}``) in ``text``, stripped; None if there is none."""
    spans = _boxed_spans(text)
    return spans[-1].strip() if spans else None


def _after_answer_phrase(text: str) -> str | None:
    """What follows the last "the answer is" / "Answer:" on its line, or None."""
    matches = list(_ANSWER_PHRASE_RE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :].split("\n", 1)[0].strip()
    rest = re.split(r"\.\s", rest, maxsplit=1)[0].strip()  # stop at the end of the sentence
    return rest or None


def _strip_answer_text(text: str) -> str:
    text = text.strip().rstrip(".").strip()
    if len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text.strip("$").strip()
    return text


def _unwrap_text_macros(s: str) -> str:
    """Drop trailing ``\\text{units}``; unwrap a whole-answer ``\\text{Monday}``; inline ``\\text{ and }`` kept."""
    whole = re.fullmatch(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", s.strip())
    if whole:
        return whole.group(1)
    s = re.sub(r"(?<=\S)\s*\\(?:text|mbox|mathrm)\{[^{}]*\}(?:\^\{?\d\}?)?\s*$", "", s)
    return re.sub(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", r"\1", s)


def normalize_math(text: str) -> str:
    """Canonical string form of a MATH-style answer, for exact comparison.

    Args:
        text: e.g. "$\\left( 3, \\dfrac{\\pi}{2} \\right)$", "10\\%", "90^\\circ", "5\\text{ cm}".
    Returns:
        The normalised string: no spaces, \\left/\\right, spacing macros, degrees, units, "$" or trailing period;
        "dfrac"/"tfrac" -> "frac" and "\\frac12" -> "\\frac{1}{2}".
    """
    s = text.strip()
    boxed = last_boxed(s)
    if boxed is not None:
        s = boxed
    s = s.strip().strip("$").strip()
    s = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", s).strip()
    s = s.replace("\\displaystyle", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])\.?", "", s)
    s = re.sub(r"\\[!,;: ]|~", "", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°", "", s)
    s = _unwrap_text_macros(s)
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "").replace("$", "")
    s = s.replace("{,}", "")  # LaTeX thousands separator "1{,}000"
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
    s = s.rstrip(".")
    # "x=5" / "k=3": a short variable name on the left is not part of the answer
    lhs = re.fullmatch(r"[a-zA-Z]\w{0,2}=([^=]+)", s)
    if lhs:
        s = lhs.group(1)
    return s


def _math_number(s: str) -> Fraction | None:
    """The value of a normalised math string that is exactly one number ("-\\frac{1}{2}", "0.5", "1,000")."""
    # "\frac{1}{2}", "-\frac{3}{4}" and MATH's mixed numbers "1\frac{4}{5}" (= 9/5)
    frac = re.fullmatch(r"([-+]?)(\d*)\\frac\{([^{}]+)\}\{([^{}]+)\}", s)
    if frac:
        num, den = _parse_number(frac.group(3), False), _parse_number(frac.group(4), False)
        if num is None or den is None or den == 0:
            return None
        value = int(frac.group(2) or 0) + num / den
        return -value if frac.group(1) == "-" else value
    return _parse_number(s, allow_units=False)


def _split_top_level(s: str) -> list[str]:
    """Split on commas that are not inside brackets: "(1,2),3" -> ["(1,2)", "3"]."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return parts


def _math_equal(a: str, b: str) -> bool:
    if a == b:
        return True
    va, vb = _math_number(a), _math_number(b)
    if va is not None and vb is not None:
        return _close(va, vb)
    # Tuples and intervals: same brackets, element-wise equal ("(3,0.5)" vs "(3,\frac{1}{2})").
    if len(a) >= 2 and len(b) >= 2 and a[0] + a[-1] == b[0] + b[-1] and a[0] in "([{" and a[-1] in ")]}":
        pa, pb = _split_top_level(a[1:-1]), _split_top_level(b[1:-1])
        if len(pa) == len(pb) > 1:
            return all(_math_equal(x, y) for x, y in zip(pa, pb, strict=True))
    return False


# ---------------------------------------------------------------- public API


def _extract_number(text: str) -> str | None:
    if "####" in text:
        found = _first_number(text.rsplit("####", 1)[1])
        if found is not None:
            return found
    boxed = last_boxed(text)
    if boxed is not None:
        value = normalize_number(boxed)
        if value is not None:
            return format_number(value)
        found = _last_number(boxed)
        if found is not None:
            return found
    phrase = _after_answer_phrase(text)
    if phrase is not None:
        found = _first_number(phrase)
        if found is not None:
            return found
    return _last_number(text)


def _extract_math(text: str) -> str | None:
    boxed = last_boxed(text)
    if boxed:
        return boxed
    phrase = _after_answer_phrase(text)
    if phrase:
        span = re.search(r"\$([^$]+)\$", phrase)  # "the answer is $\frac{1}{2}$ cups"
        return span.group(1).strip() if span else _strip_answer_text(phrase)
    spans = re.findall(r"\$([^$]+)\$", text.replace("$$", "$"))
    if spans and spans[-1].strip():
        return spans[-1].strip()
    return _last_number(text)


_CHOICE_PATTERNS = (
    # "the answer is (C)", "Answer: C", "correct answer is option C", "\boxed{C}"
    re.compile(r"(?i:answer\s*(?:is|:)\s*:?\s*(?:option\s+|choice\s+)?)\(?([A-J])\)?(?![A-Za-z])(?!(?<=I)\s+[a-z])"),
    re.compile(r"\\boxed\{\s*\(?([A-J])\)?\s*\}"),
    re.compile(r"\(([A-J])\)"),
)


def _extract_choice(text: str) -> str | None:
    for pattern in _CHOICE_PATTERNS:
        matches = pattern.findall(text)
        if matches:
            return matches[-1].upper()
    start = re.match(r"\s*\(?([A-J])(?:[.):]|\s*$)", text)  # "C. because", "C)", a bare "C"
    if start:
        return start.group(1)
    return None


def extract_answer(text: str, kind: str) -> str | None:
    """Pull the final answer out of generated text.

    Args:
        text: the model's output (or a reference solution).
        kind: "number" (a normalised numeric string such as "1234" or "0.75"), "math" (the last \\boxed{}
            content, else "the answer is X", else the last $...$ span, else the last number) or "choice"
            (an uppercase letter A-J).
    Returns:
        The answer as text, or None when nothing answer-like is found.
    """
    if kind not in ANSWER_KINDS:
        raise ValueError(f"kind must be one of {ANSWER_KINDS}, got {kind!r}")
    if not text:
        return None
    if kind == "number":
        return _extract_number(text)
    if kind == "math":
        return _extract_math(text)
    return _extract_choice(text)


def _close(a: Fraction, b: Fraction) -> bool:
    return a == b or abs(a - b) <= _REL_TOL * max(abs(a), abs(b))


def is_equivalent(prediction: str | None, reference: str, kind: str) -> bool:
    """Whether a predicted answer matches the reference.

    Args:
        prediction: an extracted answer (None never matches).
        reference: the reference answer text.
        kind: "number" (exact or within relative 1e-6), "math" (normalised LaTeX, numbers by value) or
            "choice" (case-insensitive letter).
    Returns:
        True when they are the same answer.
    """
    if kind not in ANSWER_KINDS:
        raise ValueError(f"kind must be one of {ANSWER_KINDS}, got {kind!r}")
    if prediction is None or reference is None:
        return False
    if kind == "choice":
        p, r = prediction.strip().strip("().").upper(), reference.strip().strip("().").upper()
        return len(p) == 1 and p == r
    if kind == "number":
        vp, vr = normalize_number(prediction), normalize_number(reference)
        if vp is not None and vr is not None:
            return _close(vp, vr)
        return prediction.strip().lower() == reference.strip().lower() != ""
    pred = normalize_math(prediction)
    return bool(pred) and _math_equal(pred, normalize_math(reference))


def gsm8k_reference(solution: str) -> str | None:
    """The GSM8K answer: the number after "#### " on the last line, canonical ("1,600" -> "1600"); None if absent."""
    lines = [line for line in solution.strip().splitlines() if line.strip()]
    if not lines or "####" not in lines[-1]:
        return None
    value = normalize_number(lines[-1].split("####", 1)[1].replace(",", ""))
    return None if value is None else format_number(value)


def math_reference(solution: str) -> str | None:
    """The MATH answer: the last ``\\boxed{}`` of the solution, or None."""
    return last_boxed(solution) or None


def answer_line(text: str) -> str:
    """The answer: the generated text up to its first newline (generation stops there anyway)."""
    return text.split("\n", 1)[0]


def answer_of(text: str | None, kind: str) -> str | None:
    """The answer extracted from a generation's answer line (None when it holds none)."""
    return extract_answer(answer_line(text or ""), kind)


def grade(text: str | None, reference: str, kind: str) -> tuple[str | None, bool]:
    """The answer extracted from a generation's answer line, and whether it equals ``reference``."""
    prediction = answer_of(text, kind)
    return prediction, bool(is_equivalent(prediction, reference, kind))
