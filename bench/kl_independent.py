"""An independent computation of mean KL divergence and top-1 agreement, to check ``edgegen eval``.

Shares no code with ``edgegen.evaluate``: llama-cpp-python's ``Llama`` directly for logits, torch for
the log-softmax and KL (``torch.nn.functional.kl_div``). Same definition as llama-perplexity
--kl-divergence: chunks of N tokens, BOS first when the model adds one, second half scored.

    .venv/bin/python bench/kl_independent.py MODEL REF TEXT [--chunk 512] [--chunks 16]
"""

from __future__ import annotations

import argparse
import json

import llama_cpp
import numpy as np
import torch
import torch.nn.functional as F


def logits_for(llm: llama_cpp.Llama, ids: list[int]) -> torch.Tensor:
    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float64))


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("ref")
    ap.add_argument("text")
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=16)
    a = ap.parse_args()
    kw = dict(n_ctx=a.chunk, n_batch=a.chunk, n_ubatch=a.chunk, logits_all=True, verbose=False)
    ref = llama_cpp.Llama(a.ref, **kw)
    model = llama_cpp.Llama(a.model, **kw)
    text = open(a.text, encoding="utf-8", errors="replace").read()
    toks = ref.tokenize(text.encode(), add_bos=False, special=False)
    add_bos = ref.metadata.get("tokenizer.ggml.add_bos_token", "true") != "false"
    kls, same = [], []
    for c in range(min(a.chunks, len(toks) // a.chunk)):
        ids = toks[c * a.chunk : (c + 1) * a.chunk]
        if add_bos:
            ids[0] = ref.token_bos()
        half = a.chunk // 2
        lq = F.log_softmax(logits_for(ref, ids)[half : a.chunk - 1], dim=-1)
        lp = F.log_softmax(logits_for(model, ids)[half : a.chunk - 1], dim=-1)
        kls.append(F.kl_div(lp, lq, log_target=True, reduction="none").sum(-1))
        same.append(lp.argmax(-1) == lq.argmax(-1))
    kl = torch.cat(kls)
    result = {"kl_mean": kl.mean().item(), "top1_agreement": torch.cat(same).double().mean().item(),
              "n_tokens_scored": len(kl)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
