"""The group drift verdict (``drift.group``) that starts ``edgegen learn start --on-drift``: pure values."""

from __future__ import annotations

import pytest

from edgegen.drift.group import group_drift

MEMBERS = ("a", "b", "c", "d")


def test_no_alert_is_no_drift() -> None:
    g = group_drift("lab", MEMBERS, {})
    assert not g.flagged and g.fraction == 0.0
    assert g.summary() == "no drift flagged: 0/4 devices of group 'lab' raised a drift alert in the last 24 h"


def test_one_alert_flags_the_group_by_default() -> None:
    g = group_drift("lab", MEMBERS, {"b": "psi.prompt_chars=0.4"})
    assert g.flagged and g.drifted == ("b",) and g.reasons == {"b": "psi.prompt_chars=0.4"}
    assert g.summary().startswith("drift flagged: 1/4 devices")


def test_min_fraction_and_outsiders() -> None:
    alerts = {"a": "x", "b": "y", "zz": "not a member"}
    assert group_drift("lab", MEMBERS, alerts, min_fraction=0.5).flagged  # 2/4
    g = group_drift("lab", MEMBERS, alerts, min_fraction=0.75)
    assert not g.flagged and g.drifted == ("a", "b") and "(needs 75%)" in g.summary()
    assert group_drift("lab", (), alerts).to_dict()["flagged"] is False  # nobody in the group
    with pytest.raises(ValueError):
        group_drift("lab", MEMBERS, alerts, min_fraction=1.5)
