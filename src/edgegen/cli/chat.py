"""``edgegen run MODEL`` with no prompt: an interactive chat, the way ``ollama run`` works.

    >>> What is the capital of France?        a message (rendered with the model's chat template)
    >>> \"\"\"                                   multi-line: everything up to a line ending in \"\"\"
    /bye  /clear  /set temperature 0.7  /set seed 1  /set system TEXT  /show  /?

The conversation history is kept across turns. Ctrl-C while a reply streams stops that reply and keeps
the session (the part already shown stays in the history); Ctrl-C at the prompt says how to leave;
Ctrl-D or /bye leaves. ``ChatSession`` is the pure part (history, commands, settings); ``repl`` wires it
to a terminal or any line source, so tests drive it without one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from edgegen.runtime.engine import SamplingParams

HELP = """Commands:
  /set temperature X | top_p X | top_k N | min_p X | seed N | system TEXT
  /show      the sampling settings in use
  /clear     forget the conversation
  /bye       leave (or Ctrl-D)
Use \"\"\" to begin and end a multi-line message. Ctrl-C stops a reply."""

_NUMERIC = {"temperature": float, "top_p": float, "top_k": int, "min_p": float, "repeat_penalty": float, "seed": int}


@dataclass
class ChatSession:
    params: SamplingParams
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def command(self, line: str) -> tuple[bool, str]:
        """Apply a /command; returns (keep going, text to show)."""
        word, _, rest = line.strip().partition(" ")
        if word in ("/bye", "/exit", "/quit"):
            return False, ""
        if word in ("/?", "/help"):
            return True, HELP
        if word == "/clear":
            self.history.clear()
            return True, "Cleared the conversation."
        if word == "/show":
            p = self.params
            return True, (f"temperature {p.temperature}  top_k {p.top_k}  top_p {p.top_p}  min_p {p.min_p}  "
                          f"repeat_penalty {p.repeat_penalty}  seed {p.seed}  max_tokens {p.max_tokens}")
        if word == "/set":
            name, _, value = rest.strip().partition(" ")
            if name == "system":
                self.system = value.strip() or None
                return True, "Set the system message."
            kind = _NUMERIC.get(name)
            if kind is None:
                return True, f"Unknown setting {name!r}. {HELP.splitlines()[1].strip()}"
            try:
                self.params = replace(self.params, **{name: kind(value)})
            except ValueError:
                return True, f"{name} needs a number, not {value!r}"
            return True, f"Set {name} to {value}."
        return True, f"Unknown command {word!r}. Type /? for help."


def read_message(read: Callable[[str], str]) -> str:
    """One message: a line, or the lines between two \"\"\" marks. Raises EOFError / KeyboardInterrupt."""
    line = read(">>> ")
    if not line.lstrip().startswith('"""'):
        return line
    first = line.lstrip()[3:]
    if first.rstrip().endswith('"""') and len(first.rstrip()) >= 3:
        return first.rstrip()[:-3]
    lines = [first] if first else []
    while True:
        more = read("... ")
        if more.rstrip().endswith('"""'):
            lines.append(more.rstrip()[:-3])
            return "\n".join(lines).strip("\n")
        lines.append(more)


def repl(engine: Any, params: SamplingParams, *, read: Callable[[str], str] = input,
         out: TextIO = sys.stdout) -> None:
    """Chat until /bye or end of input. ``engine.chat_stream(messages, params)`` yields tokens."""
    session = ChatSession(params)
    engine.chat_prompt([{"role": "user", "content": "hi"}])  # a template that cannot render fails here, once
    out.write("Send a message (/? for help)\n")
    while True:
        try:
            text = read_message(read)
        except EOFError:
            out.write("\n")
            return
        except KeyboardInterrupt:
            out.write("\nUse Ctrl + d or /bye to exit.\n")
            continue
        if not text.strip():
            continue
        if text.startswith("/"):
            keep, shown = session.command(text)
            if shown:
                out.write(shown + "\n")
            if not keep:
                return
            continue
        session.history.append({"role": "user", "content": text})
        reply: list[str] = []
        tokens = engine.chat_stream(session.messages(), session.params)
        try:
            for tok in tokens:
                reply.append(tok.text)
                out.write(tok.text)
                out.flush()
        except KeyboardInterrupt:
            out.write(" ^C (reply stopped)")
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:
                close()
        out.write("\n\n")
        session.history.append({"role": "assistant", "content": "".join(reply)})
