"""Structured pruning: whole blocks (depth), FFN channels and KV groups (width), into a GGUF llama.cpp runs faster.

    prune(src, out, PruneTarget.parse("layers=24,ffn=1024"), calib_text=text) -> PruneReport

``importance`` scores (Minitron activations for width, ShortGPT Block Influence for depth), ``plan``
is the pure choice (scores + target -> PrunePlan), ``apply`` writes the GGUF. Distillation, which
recovers what pruning loses, is ``edgegen.distill``.
"""

from edgegen.prune.importance import Importance, score
from edgegen.prune.plan import PrunePlan, PruneTarget, Shape, make_plan
from edgegen.prune.pruner import PruneReport, prune

__all__ = ["Importance", "PrunePlan", "PruneReport", "PruneTarget", "Shape", "make_plan", "prune", "score"]
