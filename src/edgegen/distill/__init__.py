"""Knowledge distillation: a pruned (or otherwise compressed) student learns its teacher's next-token distribution.

    distill(student, teacher, out, text=..., config=DistillConfig(budget_minutes=10), workdir=...) -> DistillReport

``teacher`` caches the teacher's top-k log-probabilities (llama.cpp, once per sequence); ``trainer``
holds the loss (``kd_loss``) and the budgeted, resumable loop. Pruning is ``edgegen.prune``.
"""

from edgegen.distill.teacher import TeacherCache, same_tokenizer
from edgegen.distill.trainer import DistillConfig, DistillReport, DistillStatus, LRSchedule, distill, kd_loss

__all__ = ["DistillConfig", "DistillReport", "DistillStatus", "LRSchedule", "TeacherCache", "distill", "kd_loss",
           "same_tokenizer"]
