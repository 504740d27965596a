"""Label-free signals of one request, computed on the device from what the engine already produced.

    request_signals(prompt, token_logprobs) -> Signals
        numeric: prompt length (log chars), mean output token log-probability (when the engine was
                 asked for logprobs), and the prompt's share of letters, upper case, digits,
                 punctuation, whitespace and non-ASCII characters
        categorical: counts of character classes and of letters a-z (a cheap language fingerprint:
                 English, French, source code and numbers have very different letter profiles)

Nothing here needs a label, a tokenizer or another model, and nothing is stored: ``monitor.py``
windows the signals and compares them with the reference. No I/O.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from dataclasses import dataclass, field

NUMERIC_FEATURES = ("log_prompt_chars", "mean_logprob", "frac_alpha", "frac_upper", "frac_digit",
                    "frac_punct", "frac_space", "frac_non_ascii")
CHAR_CLASSES = ("lower", "upper", "digit", "punct", "space", "other_ascii", "non_ascii")
LETTERS = tuple(string.ascii_lowercase)
_PUNCT = frozenset(string.punctuation)


@dataclass(frozen=True)
class Signals:
    numeric: dict[str, float]  # a subset of NUMERIC_FEATURES (mean_logprob only with logprobs)
    char_classes: dict[str, int] = field(default_factory=dict)
    letters: dict[str, int] = field(default_factory=dict)


def char_class(ch: str) -> str:
    if ord(ch) >= 128:
        return "non_ascii"
    if ch.islower():
        return "lower"
    if ch.isupper():
        return "upper"
    if ch.isdigit():
        return "digit"
    if ch in _PUNCT:
        return "punct"
    if ch.isspace():
        return "space"
    return "other_ascii"


def request_signals(prompt: str, token_logprobs: Sequence[float] | None = None) -> Signals:
    classes = dict.fromkeys(CHAR_CLASSES, 0)
    letters = dict.fromkeys(LETTERS, 0)
    for ch in prompt:
        classes[char_class(ch)] += 1
        low = ch.lower()
        if low in letters:
            letters[low] += 1
    n = max(1, len(prompt))
    alpha = classes["lower"] + classes["upper"]
    numeric = {
        "log_prompt_chars": math.log1p(len(prompt)),
        "frac_alpha": alpha / n,
        "frac_upper": classes["upper"] / max(1, alpha),
        "frac_digit": classes["digit"] / n,
        "frac_punct": classes["punct"] / n,
        "frac_space": classes["space"] / n,
        "frac_non_ascii": classes["non_ascii"] / n,
    }
    lps = [x for x in (token_logprobs or ()) if x is not None and math.isfinite(x)]
    if lps:
        numeric["mean_logprob"] = sum(lps) / len(lps)
    return Signals(numeric, classes, letters)
