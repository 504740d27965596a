"""Checking a model's chat template before it is written or served.

    template_error(template) -> None if every template compiles, else "TemplateSyntaxError: ..." (one line)
    BadTemplate               what ``convert`` does with a template that does not compile: refuse | drop

A template "compiles" when llama-cpp-python's ``Jinja2ChatFormatter`` (the sandboxed Jinja2
environment the engine renders it with) accepts it; that is also the check ``llama_cpp.Llama`` applies
when it loads a file, so a template that passes here never fails a load. Rendering can still fail for
particular messages (``raise_exception`` in the template): that is a per-request error. No I/O.
"""

from __future__ import annotations

import enum
from typing import Any


class BadTemplate(enum.Enum):
    REFUSE = "refuse"  # a conversion with a broken template fails: nothing is written
    DROP = "drop"  # the template is left out (with a warning): chat falls back to a plain transcript


def template_error(template: str | list[dict[str, Any]] | None) -> str | None:
    """Why ``template`` (one Jinja2 text, or HF's list of named templates) does not compile, or None."""
    if not template:
        return None
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    texts = [template] if isinstance(template, str) else [t.get("template", "") for t in template]
    for text in texts:
        try:
            Jinja2ChatFormatter(template=str(text), eos_token="", bos_token="")
        except Exception as exc:  # jinja2.TemplateSyntaxError and friends
            return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None
