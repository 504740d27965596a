"""Health check of a candidate model before it becomes active: it loads, it generates, it is fast
enough. Runs in the agent's process on the inactive slot while the active model keeps serving.

    HealthPolicy(max_latency_s, n_tokens, prompt)   the bar (load + first tokens within the bound)
    check_health(path, policy, adapter=) -> HealthReport   or ``HealthCheckError`` saying which part
                                                   failed; with a LoRA ``adapter``, base + adapter

This module does not decide what happens after a failure (the agent keeps the old slot).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from edgegen.durable import crashpoint
from edgegen.errors import EdgegenError, HealthCheckError


@dataclass(frozen=True)
class HealthPolicy:
    max_latency_s: float = 60.0  # load + generation of n_tokens
    n_tokens: int = 4
    prompt: str = "Once upon a time"
    n_ctx: int = 256
    n_threads: int | None = 1  # a few tokens need no thread pool (and spin-waiting threads stall on busy CPUs)


@dataclass(frozen=True)
class HealthReport:
    load_s: float
    generate_s: float
    tokens: int
    text: str

    def as_dict(self) -> dict[str, object]:
        return {"load_s": round(self.load_s, 4), "generate_s": round(self.generate_s, 4),
                "tokens": self.tokens, "text": self.text[:80]}


def check_health(path: Path, policy: HealthPolicy = HealthPolicy(), *, adapter: Path | None = None) -> HealthReport:
    """Load ``path`` (GGUF or ONNX folder; with the LoRA ``adapter`` applied, if any) and generate a few tokens."""
    from edgegen.runtime.base import open_engine
    from edgegen.runtime.engine import SamplingParams

    t0 = time.perf_counter()
    try:
        engine = open_engine(path, n_ctx=policy.n_ctx, n_threads=policy.n_threads,
                             **({"lora_path": adapter} if adapter is not None else {}))
    except EdgegenError as exc:
        raise HealthCheckError(f"the model does not load: {exc}") from exc
    load_s = time.perf_counter() - t0
    crashpoint("health.loaded")
    try:
        t1 = time.perf_counter()
        out = engine.complete(policy.prompt, SamplingParams.greedy(policy.n_tokens))
        generate_s = time.perf_counter() - t1
    except EdgegenError as exc:
        raise HealthCheckError(f"the model does not generate: {exc}") from exc
    finally:
        engine.close()
    if out.completion_tokens < 1:
        raise HealthCheckError("the model generated no token")
    if load_s + generate_s > policy.max_latency_s:
        raise HealthCheckError(
            f"too slow: load {load_s:.2f}s + {out.completion_tokens} tokens {generate_s:.2f}s "
            f"exceeds {policy.max_latency_s:.2f}s"
        )
    return HealthReport(load_s, generate_s, out.completion_tokens, out.text)
