"""``edgegen run MODEL`` with no prompt: an interactive chat (history, template, multi-line, commands,
Ctrl-C stops a reply and not the session), and sampling defaults from the model's own settings."""

from __future__ import annotations

import io
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from edgegen.cli.chat import ChatSession, read_message, repl
from edgegen.runtime.engine import Engine, SamplingParams
from edgegen.runtime.sampling import model_defaults


def lines(*items: str):
    it = iter(items)

    def read(prompt: str) -> str:
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    return read


def test_session_commands() -> None:
    s = ChatSession(SamplingParams())
    assert s.command("/set temperature 0.3") == (True, "Set temperature to 0.3.") and s.params.temperature == 0.3
    assert s.command("/set seed x")[1].startswith("seed needs a number")
    s.command("/set system Be brief.")
    s.history.append({"role": "user", "content": "hi"})
    assert s.messages()[0] == {"role": "system", "content": "Be brief."}
    s.command("/clear")
    assert s.history == [] and s.command("/bye")[0] is False and "Unknown" in s.command("/nope")[1]


def test_multi_line_messages() -> None:
    assert read_message(lines('"""first', "second", 'third"""')) == "first\nsecond\nthird"
    assert read_message(lines('"""one line"""')) == "one line"
    assert read_message(lines("plain")) == "plain"


class _Interrupting(io.StringIO):
    """A terminal where the user presses Ctrl-C after ``after`` pieces of the first reply."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.pieces, self.fired = after, 0, False

    def write(self, s: str) -> int:
        if not self.fired and s and not s.endswith("\n") and not s.startswith(" ^C"):
            self.pieces += 1
            if self.pieces > self.after:
                self.fired = True
                raise KeyboardInterrupt
        return super().write(s)


@pytest.fixture(scope="module")
def engine(stories_gguf: Path):
    with Engine(stories_gguf, n_ctx=256, n_threads=1) as e:
        yield e


def test_repl_keeps_history_and_survives_ctrl_c(engine: Engine) -> None:
    out = _Interrupting(after=3)
    seen: list[list[dict]] = []
    real = engine.chat_stream

    def chat_stream(messages, params):  # records what each turn sends, then runs the real engine
        seen.append([dict(m) for m in messages])
        return real(messages, params)

    class Recording:
        chat_prompt = staticmethod(engine.chat_prompt)

    rec = Recording()
    rec.chat_stream = chat_stream  # type: ignore[attr-defined]
    repl(rec, SamplingParams(max_tokens=40, temperature=0.8, seed=1),
         read=lines("Once upon a time", '"""Lily', 'saw a cat"""', "/show", "/bye", "never read"), out=out)
    text = out.getvalue()
    assert "(reply stopped)" in text and "temperature 0.8" in text
    assert len(seen) == 2  # the interrupted turn, then the multi-line one: the session went on
    second = seen[1]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[2]["content"] == "Lily\nsaw a cat"
    assert second[1]["content"]  # the part shown before Ctrl-C is kept in the history


def test_cli_interactive_over_a_pipe(stories_gguf: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "edgegen", "run", str(stories_gguf), "-n", "12", "--ctx", "128"],
                       input="Once upon a time\n/set temperature 0\n/show\n/bye\n", capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "Send a message" in p.stdout and "temperature 0.0" in p.stdout


def test_model_defaults_prefer_the_models_settings() -> None:
    params, src = model_defaults({"general.sampling.temp": "0.6", "general.sampling.top_k": "20",
                                  "general.sampling.top_p": "bogus"})
    assert params.temperature == 0.6 and params.top_k == 20 and params.top_p == SamplingParams().top_p
    assert src == {"temperature": "model", "top_k": "model", "top_p": "llama.cpp", "min_p": "llama.cpp",
                   "repeat_penalty": "llama.cpp"}
    plain, _ = model_defaults({})
    assert plain.temperature == 0.8 and plain.top_k == 40 and plain.min_p == 0.05  # llama.cpp's defaults


@pytest.mark.slow
def test_run_chat_with_sampling_defaults_answers_paris(smollm2_q4_1: Path) -> None:
    """The field report: greedy decoding made SmolLM2 ramble; llama.cpp's sampling defaults answer.

    What a seed draws depends on the CPU's kernels (the same seeds answered 2 of 3 on an AVX2 machine
    and 1 of 3 on an AVX-512 one), so the test counts over 16 seeds, where this model answers about
    half the time (8 of 16 on a 2-core AVX-512 Xeon). At a rate of one half, fewer than 3 of 16 has a
    probability of 0.2%. The CLI's own output for one seed must be the one the in-process check drew."""
    question = [{"role": "user", "content": "What is the capital of France?"}]
    with Engine(smollm2_q4_1, n_ctx=256, n_threads=1) as engine:
        defaults, _ = model_defaults(engine.metadata, SamplingParams(max_tokens=24))
        answers = [engine.chat(question, replace(defaults, seed=seed)).text for seed in range(1, 17)]
    assert len(set(answers)) >= 12, answers  # sampled, not one greedy answer repeated
    assert sum("Paris" in a for a in answers) >= 3, answers
    p = subprocess.run([sys.executable, "-m", "edgegen", "run", str(smollm2_q4_1),
                        "What is the capital of France?", "--chat", "-n", "24", "--seed", "3",
                        "--threads", "1"], capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == answers[2].strip()
