"""The Engine on a real model (stories260K converted by our converter), under real llama.cpp."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from edgegen.errors import ContextOverflowError, InvalidModelError, ModelNotFoundError, UserInputError
from edgegen.runtime.engine import Engine, SamplingParams, StreamStats
from tests.conftest import STORIES_TEXT


@pytest.fixture(scope="module")
def engine(stories_gguf: Path):
    # one thread: a 260K-parameter model gains nothing from two, and spinning threads suffer on a shared CPU
    with Engine(stories_gguf, n_ctx=512, logits_all=True, n_threads=1) as e:
        yield e


def test_greedy_reproduces_known_text(engine: Engine) -> None:
    out = engine.complete("Once upon a time", SamplingParams.greedy(60))
    assert ("Once upon a time" + out.text).startswith(STORIES_TEXT)
    assert out.finish_reason == "length" and out.completion_tokens == 60


def test_stream_matches_complete_and_counts_tokens(engine: Engine) -> None:
    stats = StreamStats()
    pieces = [t.text for t in engine.stream("Once upon a time", SamplingParams.greedy(30), stats)]
    assert "".join(pieces) == engine.complete("Once upon a time", SamplingParams.greedy(30)).text
    assert stats.completion_tokens == 30 and stats.prompt_tokens == len(engine.tokenize("Once upon a time"))
    assert stats.ttft_s is not None and stats.total_s >= stats.ttft_s


@pytest.mark.parametrize("bos", [True, False])
@pytest.mark.parametrize("prompt", ["Once upon a time", " Once upon a time"])
def test_detokenize_of_prompt_and_generated_ids_is_prompt_plus_streamed_text(engine: Engine, prompt: str,
                                                                             bos: bool) -> None:
    """What an echo plus its completion shows: the text of all the ids, with or without BOS, is the
    prompt as written (SentencePiece's prefix space gone, its own leading space kept), then the
    streamed pieces."""
    ids = engine.tokenize(prompt, add_bos=bos)
    assert (ids[0] == engine.bos_id) == bos
    toks = list(engine.stream(ids, SamplingParams.greedy(20)))
    assert engine.detokenize(ids + [t.id for t in toks]) == prompt + "".join(t.text for t in toks)


def test_token_pieces_longer_than_the_buffer_and_ids_outside_the_vocabulary(stories_gguf: Path) -> None:
    """A piece longer than the engine's piece buffer is read again at the size llama.cpp asks for (not
    dropped); an id outside the vocabulary is refused (llama.cpp would abort the process) or, for
    ``token_bytes``, renders as nothing."""
    with Engine(stories_gguf, n_ctx=64, n_threads=1) as e:
        ids = e.tokenize(STORIES_TEXT[:200])
        text, pieces = e.detokenize(ids), [e.token_bytes(t) for t in ids]
        e._pieces.clear()
        e._piece_buf = ctypes.create_string_buffer(1)  # every multi-byte piece now takes the retry
        assert [e.token_bytes(t) for t in ids] == pieces and e.detokenize(ids) == text
        assert max(map(len, pieces)) > 1
        with pytest.raises(UserInputError, match="outside the vocabulary"):
            e.detokenize([ids[1], e.n_vocab])
        with pytest.raises(UserInputError, match="outside the vocabulary"):
            e.detokenize([-1])
        assert e.token_bytes(e.n_vocab) == b"" and e.token_bytes(-1) == b""


def test_stop_string_cuts_output(engine: Engine) -> None:
    out = engine.complete("Once upon a time", SamplingParams.greedy(60, stop=("Lily",)))
    assert out.text == ", there was a little girl named "
    assert out.finish_reason == "stop"


def test_seeded_sampling_is_reproducible(engine: Engine) -> None:
    p = SamplingParams(max_tokens=40, temperature=1.0, seed=1234)
    a = engine.complete("Once upon a time", p).text
    b = engine.complete("Once upon a time", p).text
    c = engine.complete("Once upon a time", SamplingParams(max_tokens=40, temperature=1.0, seed=99)).text
    assert a == b
    assert a != c  # 40 tokens at temperature 1 from two seeds: identical would mean the seed is ignored


def test_logprobs_are_log_probabilities(engine: Engine) -> None:
    out = engine.complete("Once upon a time", SamplingParams.greedy(10, logprobs=True))
    lps = np.array(out.token_logprobs)
    assert len(lps) == 10 and np.all(lps <= 0) and np.all(lps > -20)


def test_logits_are_deterministic_and_shaped(engine: Engine) -> None:
    ids = engine.tokenize(STORIES_TEXT)
    a = engine.logits(ids)
    engine.complete("Something else entirely", SamplingParams.greedy(5))  # disturb the cache
    b = engine.logits(ids)
    assert a.shape == (len(ids), engine.n_vocab)
    np.testing.assert_array_equal(a, b)
    # greedy generation agrees with argmax of the logits
    nxt = engine.complete(ids, SamplingParams.greedy(1)).text
    assert engine.detokenize([int(a[-1].argmax())]).strip() == nxt.strip()


def test_closing_the_stream_stops_generation(engine: Engine) -> None:
    stats = StreamStats()
    it = engine.stream("Once upon a time", SamplingParams.greedy(200), stats)
    for i, _ in enumerate(it):
        if i == 4:
            break
    it.close()
    assert stats.completion_tokens == 5


def test_prompt_beyond_context_is_refused(engine: Engine) -> None:
    with pytest.raises(ContextOverflowError):
        engine.complete([1] + [300] * 600, SamplingParams.greedy(1))


def test_prompt_prefilled_in_pieces_is_reused_not_evaluated_again(engine: Engine) -> None:
    import llama_cpp

    ids = engine.tokenize("Once upon a time, there was a little girl named Lily. She loved to play")
    engine.reset()
    want = [t.id for t in engine.stream(ids, SamplingParams.greedy(12))]
    engine.reset()
    for start in range(0, len(ids), 5):
        engine.eval_prompt(ids[start:start + 5])
    llama_cpp.llama_perf_context_reset(engine._llm.ctx)
    got = [t.id for t in engine.stream(ids, SamplingParams.greedy(12))]
    assert got == want
    # the stream sampled from the pieces' context: nothing of the prompt was evaluated again, only the
    # 11 generated tokens after the first (llama.cpp reports n_p_eval as at least 1)
    perf = llama_cpp.llama_perf_context(engine._llm.ctx)
    assert (perf.n_p_eval, perf.n_eval) == (1, 11)
    with pytest.raises(ContextOverflowError):
        engine.eval_prompt([300] * engine.n_ctx)


def test_chat_without_template_still_answers(engine: Engine) -> None:
    out = engine.chat([{"role": "user", "content": "Tell me a story."}], SamplingParams.greedy(10))
    assert out.completion_tokens > 0


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        Engine(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    with pytest.raises(InvalidModelError):
        Engine(junk)
