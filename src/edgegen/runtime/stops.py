"""Stop strings over a stream of text pieces: pure logic, no engine.

``StopFilter.push(piece)`` returns the text that is safe to emit now and whether a stop string was
hit. Text that could be the beginning of a stop string is held back until the next piece settles it;
``flush()`` releases what is held when the stream ends for another reason. The emitted text is always
exactly the full text cut before the earliest-starting occurrence of any stop string, however the
text was split into pieces (a complete stop is not acted on while a longer one that starts earlier
may still complete).
"""

from __future__ import annotations


class StopFilter:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def push(self, piece: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            return piece
        text = self._held + piece
        # earliest position where a stop string may begin but is not complete yet
        pending = len(text) - stop_prefix_len(text, self.stops)
        cut = first_stop(text, self.stops)
        if cut is not None and cut <= pending:
            self.stopped = True
            self._held = ""
            return text[:cut]
        # no stop yet, or an earlier one may still complete: hold everything from ``pending`` on
        self._held = text[pending:]
        return text[:pending]

    def flush(self) -> str:
        """The stream ended: release what is held, cut at a stop string it may contain."""
        held, self._held = self._held, ""
        if self.stopped:
            return ""
        cut = first_stop(held, self.stops) if self.stops else None
        if cut is not None:
            self.stopped = True
            return held[:cut]
        return held


def first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Index of the earliest occurrence of any stop string, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def stop_prefix_len(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
