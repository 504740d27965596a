"""What ``compress`` did, as data: per-tensor types, sizes and predicted/measured error.

``predicted_kl`` of a tensor is the allocation's estimate (row sample, every candidate type) of the
rise in mean KL divergence per token its rounding causes; ``measured_kl`` is the same formula on all
rows after the final rounding; ``rel_output_error`` is sum E H E^T / sum W H W^T, the relative output
error on the calibration inputs (NaN where there is no Hessian). Totals assume errors add up.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TensorReport:
    name: str
    shape: list[int]
    type: str
    bytes: int
    predicted_kl: float = 0.0
    measured_kl: float = 0.0
    rel_output_error: float = float("nan")
    candidates: dict[str, list[float]] = field(default_factory=dict)  # type -> [bytes, predicted KL]


@dataclass
class CompressReport:
    source: str
    output: str
    file_bytes: int
    budget: str
    budget_bytes: int | None
    n_params: int
    bits_per_weight: float
    calibrated: bool
    calib_tokens: int
    fisher_tokens: int
    predicted_kl: float
    measured_kl: float
    predicted_decode_ms: float  # matrix work per token at one thread, by the ``speed`` model
    predicted_prefill_ms: float  # matrix work per prompt token at one thread, by the ``speed`` model
    types: dict[str, int]  # type -> parameters stored in it
    seconds: dict[str, float]
    peak_rss_bytes: int
    tensors: list[TensorReport]
    calibration: dict[str, str] = field(default_factory=dict)  # statistic -> where it came from
    speed_profile_warning: str | None = None  # ``Budget.profile_warning``: the cost model's CPU is not this one
    speed_profile: str | None = None  # ``Budget.speed_profile``: the costs' file (None: the built-in constants)

    @classmethod
    def build(cls, *, tensors: list[TensorReport], n_params: int, speed_costs: Mapping[str, float] | None = None,
              prefill_costs: Mapping[str, float] | None = None, **kw: Any) -> CompressReport:
        types: Counter[str] = Counter()
        for t in tensors:
            types[t.type] += math.prod(t.shape)
        tensor_bytes = sum(t.bytes for t in tensors)
        from edgegen.compress.speed import decode_cost, prefill_cost

        shapes = [(t.name, tuple(t.shape), t.type) for t in tensors]
        return cls(
            predicted_decode_ms=decode_cost(shapes, speed_costs),
            predicted_prefill_ms=prefill_cost(shapes, prefill_costs),
            tensors=tensors, n_params=n_params,
            bits_per_weight=round(8 * tensor_bytes / max(1, n_params), 4),
            predicted_kl=sum(t.predicted_kl for t in tensors),
            measured_kl=sum(t.measured_kl for t in tensors),
            types=dict(types),
            **kw,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for t in d["tensors"]:
            if isinstance(t["rel_output_error"], float) and math.isnan(t["rel_output_error"]):
                t["rel_output_error"] = None
        return d

    def write_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")
