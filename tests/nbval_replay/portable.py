"""Portable comparison: a chapter replayed on another kind of machine than the one that
recorded its reference agrees if the text around the numbers is the same and every number is
within a tolerance (see :func:`portable_mismatch`)."""

from __future__ import annotations

import math
import re
from pathlib import Path

NUMBER = re.compile(r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|\bnan\b|\binf\b)")
PORTABLE_RTOL = 0.10  # relative tolerance on every number in portable mode
PORTABLE_ATOL = 0.02  # absolute tolerance (numbers near zero)
PORTABLE_DIGITS = 3  # ... or this many units of the last digit shown, if that is more
MACHINE_DEPENDENT_TAG = "machine-dependent"  # see plugin.ChapterCell
GLUE_ROLE = re.compile(r"\{glue:text\}`([A-Za-z0-9_]+)(?::([^`]*))?`")


def last_digit(token: str) -> float:
    """The value of one unit in the last digit of a printed number: 0.01 for "3.14", 1 for "150",
    1e-7 for "1.5e-06"."""
    mantissa, _, exponent = token.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def glue_units(chapter: Path) -> dict[str, float]:
    """For each value the chapter's prose shows with ``{glue:text}`name:.Nf``` (or ``:.N%``), one
    unit of its last digit shown, in the value's own units (the finest if shown several times)."""
    units: dict[str, float] = {}
    for name, fmt in GLUE_ROLE.findall(chapter.read_text(encoding="utf-8")):
        m = re.search(r"\.(\d+)([f%])", fmt or "")
        if m:
            unit = 10.0 ** -(int(m.group(1)) + (2 if m.group(2) == "%" else 0))
            units[name] = min(unit, units.get(name, math.inf))
    return units


def _split_numbers(s: str) -> tuple[list[str], list[str]]:
    parts = NUMBER.split(s)
    text = [" ".join(t.split()) for t in parts[0::2]]  # runs of white space (column padding) as one
    return text, parts[1::2]


def portable_mismatch(
    ref: str, test: str, rtol: float = PORTABLE_RTOL, atol: float = PORTABLE_ATOL, unit: float | None = None,
) -> str | None:
    """Why output ``test`` does not agree with ``ref`` in portable mode, or None: the same text
    around the numbers (white space aside), and every number within ``rtol * |ref|`` plus the
    larger of ``atol`` and ``PORTABLE_DIGITS`` units of the reference's last digit shown (``unit``
    if given: a glued value's last digit in the prose). nan matches nan. Strings only; anything
    else must be equal."""
    if not (isinstance(ref, str) and isinstance(test, str)):
        return None if ref == test else "non-text outputs differ"
    ref_text, ref_nums = _split_numbers(ref)
    test_text, test_nums = _split_numbers(test)
    if ref_text != test_text:
        first = next(i for i, (a, b) in enumerate(zip(ref_text, test_text)) if a != b) if len(ref_text) == len(test_text) else None
        where = f" (first at {ref_text[first]!r} vs {test_text[first]!r})" if first is not None else ""
        return f"the text around the numbers differs{where}"
    for a_txt, b_txt in zip(ref_nums, test_nums):
        a, b = float(a_txt), float(b_txt)
        if math.isnan(a) and math.isnan(b):
            continue
        tol = rtol * abs(a) + max(atol, PORTABLE_DIGITS * (unit if unit is not None else last_digit(a_txt)))
        if not abs(a - b) <= tol:  # False for a nan on one side only
            return f"{b_txt} is not within {tol:.3g} of the reference {a_txt}"
    return None
