"""StopFilter: streamed output equals the full text cut at the first stop string, however it is split."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edgegen.runtime.stops import StopFilter, first_stop, stop_prefix_len

alphabet = st.sampled_from(list("ab c\n"))
texts = st.text(alphabet, max_size=40)
stop_sets = st.lists(st.text(alphabet, min_size=1, max_size=4), max_size=3).map(tuple)


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points + [len(text)]:
        pieces.append(text[last:p])
        last = p
    return pieces


@settings(max_examples=500)
@given(texts, stop_sets, st.lists(st.integers(0, 100), max_size=10))
def test_streamed_text_equals_text_cut_at_first_stop(text: str, stops: tuple[str, ...], cuts: list[int]) -> None:
    f = StopFilter(stops)
    out = "".join(f.push(p) for p in _split(text, cuts)) + f.flush()
    cut = first_stop(text, stops)
    assert out == (text if cut is None else text[:cut])
    assert f.stopped == (cut is not None)


def test_holds_back_a_possible_stop_prefix_until_settled() -> None:
    f = StopFilter(("</s>",))
    assert f.push("hello <") == "hello "
    assert f.push("/") == ""
    assert f.push("x") == "</x"
    assert f.push("</s> tail") == ""
    assert f.stopped


def test_stop_prefix_len() -> None:
    assert stop_prefix_len("abc", ("cd",)) == 1
    assert stop_prefix_len("abc", ("bcd", "cd")) == 2
    assert stop_prefix_len("abc", ("x",)) == 0
