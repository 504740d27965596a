"""schemathesis against the server's own OpenAPI schema, over real HTTP: no input it generates
(valid or deliberately invalid) gets a 500. Uses stories260K, so each generation costs milliseconds.

schemathesis' pytest integration (``from_fixture``) does not work with this pytest, so each
operation's hypothesis strategy is driven directly, in both generation modes."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from edgegen.serve import BackgroundServer
from tests.serve.kit import AUTH

EXAMPLES = 20  # per operation and mode


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_server_error(stories_server: BackgroundServer, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(stories_server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {f"{op.method.upper()} {op.path}" for op in operations}
    assert {"POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models"} <= labels
    if mode is GenerationMode.NEGATIVE:  # only operations that take input can be given invalid input
        operations = [op for op in operations if op.method.upper() == "POST"]
    calls: list[tuple[str, int]] = []

    for op in operations:

        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode))
        def check(case: Any) -> None:
            response = case.call(headers=AUTH, timeout=60)
            calls.append((f"{case.method} {case.path}", response.status_code))
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
            if response.status_code >= 400 and case.path.startswith("/v1/"):
                error = response.json()["error"]  # every API error in OpenAI's shape
                assert error["message"] and error["type"]

        check()
    assert {label for label, _ in calls} == {f"{op.method.upper()} {op.path}" for op in operations}
    statuses = {status for _, status in calls}
    # positive cases must be served (some 200s); negative ones refused with a 400, not crash anything
    assert (200 in statuses) if mode is GenerationMode.POSITIVE else (400 in statuses), sorted(statuses)
