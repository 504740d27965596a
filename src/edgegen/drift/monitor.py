"""Windows of request signals compared with a reference window: the device's drift detector.

    Window               accumulated signals: per-feature value lists and category counts
    DriftThresholds      PSI, KS alpha (Bonferroni-corrected across features), JS (bits), minimum sizes
    compare(ref, win)    -> DriftReport: per numeric feature PSI (bins at the reference's quantiles)
                         and KS; per categorical signal JS divergence; ``drift`` when a numeric
                         feature has PSI above threshold AND a significant KS, or a JS is above its
                         threshold (requiring two tests for numeric features keeps small windows from
                         raising false alarms on PSI's sampling noise)
    DriftMonitor         the stateful loop: the first ``reference_size`` requests after a model
                         version starts (the rollout) become the reference; then every
                         ``window_size`` requests form a tumbling window compared with it. Its state
                         is a JSON-able dict (``to_json``/``from_json``) so the agent can persist it.

Pure logic; the agent turns a report into a DRIFT telemetry event (``report.event_body()``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from edgegen.drift.signals import CHAR_CLASSES, LETTERS, NUMERIC_FEATURES, Signals
from edgegen.drift.stats import bin_counts, js_divergence, ks_2samp, psi, quantile_edges

CATEGORICAL = {"char_classes": CHAR_CLASSES, "letters": LETTERS}


@dataclass
class Window:
    numeric: dict[str, list[float]] = field(default_factory=dict)
    categorical: dict[str, dict[str, int]] = field(default_factory=dict)
    n: int = 0

    def add(self, s: Signals) -> None:
        self.n += 1
        for k, v in s.numeric.items():
            self.numeric.setdefault(k, []).append(float(v))
        for name, counts in (("char_classes", s.char_classes), ("letters", s.letters)):
            acc = self.categorical.setdefault(name, {})
            for k, c in counts.items():
                acc[k] = acc.get(k, 0) + int(c)

    @classmethod
    def of(cls, signals: Iterable[Signals]) -> Window:
        w = cls()
        for s in signals:
            w.add(s)
        return w

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "numeric": self.numeric, "categorical": self.categorical}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Window:
        return cls({k: [float(x) for x in v] for k, v in d["numeric"].items()},
                   {k: {c: int(n) for c, n in v.items()} for k, v in d["categorical"].items()}, int(d["n"]))


@dataclass(frozen=True)
class DriftThresholds:
    psi: float = 0.25
    ks_alpha: float = 0.01  # family-wise, divided by the number of numeric features compared
    js_bits: float = 0.02
    max_bins: int = 10
    min_per_bin: int = 20  # PSI bins: min(max_bins, smaller sample // min_per_bin), at least 2
    min_samples: int = 20


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    psi: float
    ks_d: float
    ks_p: float
    drift: bool


@dataclass(frozen=True)
class DriftReport:
    n_reference: int
    n_window: int
    features: tuple[FeatureDrift, ...]
    js: dict[str, float]
    drift: bool
    reasons: tuple[str, ...]
    model_version: int | None = None
    window_index: int = 0

    def event_body(self) -> dict[str, Any]:
        """A flat body for a DRIFT telemetry event."""
        body: dict[str, Any] = {"drift": self.drift, "model_version": self.model_version,
                                "window": self.window_index, "n_reference": self.n_reference,
                                "n_window": self.n_window, "reasons": "; ".join(self.reasons)[:1000]}
        for f in self.features:
            body[f"psi.{f.name}"] = round(f.psi, 6)
            body[f"ks_p.{f.name}"] = round(f.ks_p, 8)
        for k, v in self.js.items():
            body[f"js.{k}"] = round(v, 6)
        return body


def compare(ref: Window, win: Window, t: DriftThresholds = DriftThresholds()) -> DriftReport:
    names = [k for k in NUMERIC_FEATURES
             if len(ref.numeric.get(k, ())) >= t.min_samples and len(win.numeric.get(k, ())) >= t.min_samples]
    alpha = t.ks_alpha / max(1, len(names))
    features: list[FeatureDrift] = []
    reasons: list[str] = []
    for k in names:
        r, w = ref.numeric[k], win.numeric[k]
        bins = max(2, min(t.max_bins, min(len(r), len(w)) // t.min_per_bin))
        edges = quantile_edges(r, bins)
        p = psi(bin_counts(r, edges), bin_counts(w, edges))
        d, pv = ks_2samp(r, w)
        drifted = p > t.psi and pv < alpha
        features.append(FeatureDrift(k, p, d, pv, drifted))
        if drifted:
            reasons.append(f"{k}: PSI {p:.3f} > {t.psi:g} and KS p {pv:.2g} < {alpha:.2g}")
    js: dict[str, float] = {}
    for name, keys in CATEGORICAL.items():
        rc, wc = ref.categorical.get(name, {}), win.categorical.get(name, {})
        rv, wv = [rc.get(k, 0) for k in keys], [wc.get(k, 0) for k in keys]
        if sum(rv) and sum(wv):
            js[name] = js_divergence(rv, wv)
            if js[name] > t.js_bits:
                reasons.append(f"{name}: JS {js[name]:.4f} bits > {t.js_bits:g}")
    return DriftReport(ref.n, win.n, tuple(features), js, bool(reasons), tuple(reasons))


class DriftMonitor:
    def __init__(self, reference_size: int = 200, window_size: int = 100,
                 thresholds: DriftThresholds = DriftThresholds()) -> None:
        if reference_size < 1 or window_size < 1:
            raise ValueError("reference and window sizes must be positive")
        self.reference_size = reference_size
        self.window_size = window_size
        self.thresholds = thresholds
        self.model_version: int | None = None
        self.reference = Window()
        self.window = Window()
        self.windows_done = 0

    @property
    def has_reference(self) -> bool:
        return self.reference.n >= self.reference_size

    def start_version(self, version: int | None) -> None:
        """A new model version is active: capture a fresh reference from its first requests."""
        if version != self.model_version:
            self.model_version = version
            self.reference, self.window, self.windows_done = Window(), Window(), 0

    def observe(self, s: Signals, version: int | None = None) -> DriftReport | None:
        """Add one request; returns a report each time a window fills (after the reference)."""
        if version is not None:
            self.start_version(version)
        if not self.has_reference:
            self.reference.add(s)
            return None
        self.window.add(s)
        if self.window.n < self.window_size:
            return None
        report = compare(self.reference, self.window, self.thresholds)
        self.windows_done += 1
        report = DriftReport(report.n_reference, report.n_window, report.features, report.js, report.drift,
                             report.reasons, self.model_version, self.windows_done)
        self.window = Window()
        return report

    def to_json(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "reference": self.reference.to_json(),
                "window": self.window.to_json(), "windows_done": self.windows_done,
                "reference_size": self.reference_size, "window_size": self.window_size}

    @classmethod
    def from_json(cls, d: dict[str, Any], thresholds: DriftThresholds = DriftThresholds()) -> DriftMonitor:
        m = cls(int(d["reference_size"]), int(d["window_size"]), thresholds)
        m.model_version = d.get("model_version")
        m.reference = Window.from_json(d["reference"])
        m.window = Window.from_json(d["window"])
        m.windows_done = int(d.get("windows_done", 0))
        return m
