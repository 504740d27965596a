"""Which devices a rollout's selector (``--to``) names: pure decisions over values, no database.

    parse_selector(text) -> Selector     one term, or several joined by "," (all must hold)
    Target(group, labels, profile)       what a device offers the selector (``profile``: the JSON it reported)
    match(selector, target, facts) -> (bool, reason)

Terms:
    all | *          every device following the model
    KEY=VALUE        a label
    profile:NAME     devices whose reported profile is named NAME (``edgegen profile`` writes the name)
    fits[:N_CTX]     devices whose reported profile, planned against the version's signed facts
                     (``Manifest.plan``), holds the model in RAM at context N_CTX (default 2048):
                     weights + K/V cache + runtime, as ``edgegen plan`` predicts (``plan.predict.plan``)
    NAME             a group

A device that reported no profile matches neither ``profile:`` nor ``fits``; the reason says so, so an
operator sees why a device was left out. Raises ``InvalidRolloutError`` for a malformed selector.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgegen.errors import InvalidModelError, InvalidProfileError, InvalidRolloutError

DEFAULT_FIT_CTX = 2048


@dataclass(frozen=True)
class Term:
    kind: str  # all | label | profile | fits | group
    key: str = ""
    value: str = ""
    n_ctx: int = DEFAULT_FIT_CTX


@dataclass(frozen=True)
class Selector:
    terms: tuple[Term, ...]

    @property
    def needs_facts(self) -> bool:
        return any(t.kind == "fits" for t in self.terms)


@dataclass(frozen=True)
class Target:
    group: str | None
    labels: Mapping[str, str]
    profile: dict[str, Any] | None


def _term(text: str) -> Term:
    t = text.strip()
    if not t:
        raise InvalidRolloutError("an empty device selector term")
    if t in ("all", "*"):
        return Term("all")
    if t.startswith("profile:"):
        name = t.partition(":")[2].strip()
        if not name:
            raise InvalidRolloutError("profile: needs a profile name (profile:NAME)")
        return Term("profile", value=name)
    if t == "fits" or t.startswith("fits:"):
        ctx = t.partition(":")[2].strip()
        try:
            n = int(ctx) if ctx else DEFAULT_FIT_CTX
        except ValueError:
            raise InvalidRolloutError(f"fits:{ctx}: the context must be a number of tokens") from None
        if n < 1:
            raise InvalidRolloutError("fits: the context must be at least 1 token")
        return Term("fits", n_ctx=n)
    if "=" in t:
        key, _, value = t.partition("=")
        return Term("label", key=key.strip(), value=value.strip())
    return Term("group", value=t)


def parse_selector(text: str) -> Selector:
    """``all``, ``KEY=VALUE``, ``profile:NAME``, ``fits[:N_CTX]`` or a group name; "," joins terms."""
    return Selector(tuple(_term(part) for part in text.split(",")))


def _fits(term: Term, target: Target, facts: dict[str, Any] | None) -> tuple[bool, str]:
    from edgegen.plan.facts import ModelFacts
    from edgegen.plan.predict import Workload, plan
    from edgegen.plan.profile import profile_from_dict

    if target.profile is None:
        return False, "reported no device profile"
    if facts is None:
        return False, "the version carries no planner facts"
    try:
        prof = profile_from_dict(target.profile, "the reported profile")
        mf = ModelFacts.from_dict(facts)
    except (InvalidProfileError, InvalidModelError) as exc:
        return False, str(exc)
    w = Workload(n_ctx=term.n_ctx, n_prompt=min(Workload.n_prompt, term.n_ctx), n_gen=min(Workload.n_gen, term.n_ctx))
    pred = plan([mf], prof, w)[0]  # RAM alone decides: a rollout sets no speed or energy limit
    if pred.fits:
        return True, f"fits {prof.name}: {pred.ram_bytes / 2**20:.0f} MiB at context {term.n_ctx}"
    return False, f"does not fit {prof.name}: {'; '.join(pred.violations)}"


def match(selector: Selector, target: Target, facts: dict[str, Any] | None = None) -> tuple[bool, str]:
    """Whether ``target`` is selected, and why not (the first term that fails) or why (a fit)."""
    why = "selected"
    for t in selector.terms:
        if t.kind == "all":
            continue
        if t.kind == "group":
            if target.group != t.value:
                return False, f"not in group {t.value}"
        elif t.kind == "label":
            if target.labels.get(t.key) != t.value:
                return False, f"label {t.key} is not {t.value}"
        elif t.kind == "profile":
            name = (target.profile or {}).get("name")
            if name is None:
                return False, "reported no device profile"
            if name != t.value:
                return False, f"profile is {name}, not {t.value}"
        else:
            ok, why = _fits(t, target, facts)
            if not ok:
                return False, why
    return True, why
