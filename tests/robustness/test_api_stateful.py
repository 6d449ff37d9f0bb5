"""The API holds up to schemathesis' stateful mode: sequences of calls chained by the OpenAPI
document's links (submit a job, then follow its id to its status, result, preview, level,
series choice and deletion, in any order, with made-up inputs at every step) get no server
error, only documented status codes, and answers that match their schemas. The in-process
app on a real Redis and SQLite; seeded (hypothesis ``derandomize``) and bounded (examples
and steps), so a CI run is short and repeatable.

tests/service/test_openapi.py checks each operation alone; this checks them in sequence,
on jobs that exist.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.service.helpers import auth
from web.openapi import JOB_LINKS

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
PositiveData = schemathesis.checks.positive_data_acceptance
#: Bounds of one run: sequences tried, and calls per sequence.
EXAMPLES, STEPS = 12, 6


def test_call_sequences_along_the_links_hold_to_the_document(app, api_key):
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    created: set[str] = set()
    followed: list[str] = []  # "METHOD path" of calls made on a job created in the sequence
    statuses: dict[str, set[int]] = {}

    @schema.auth()
    class Key:
        """The API key, as schemathesis' explicit auth: its auth checks then also send each
        call with no key and a wrong one, and expect 401."""

        def get(self, case, context):
            return api_key.key

        def set(self, case, data, context):
            case.headers = {**(case.headers or {}), **auth(data)}

    class Workflow(schema.as_state_machine()):
        def get_call_kwargs(self, case):
            return {"base_url": case.operation.base_url}  # /healthz is at the site's root

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(response, additional_checks=additional_checks,
                                   excluded_checks=[PositiveData], transport_kwargs=kwargs)

        def after_call(self, response, case):
            label = case.operation.label
            statuses.setdefault(label, set()).add(response.status_code)
            if label == "POST /jobs" and response.status_code in (200, 201):
                created.add(response.json()["id"])
            elif (case.path_parameters or {}).get("job_id") in created:
                followed.append(label)

    Workflow.run(settings=settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, derandomize=True, deadline=None,
        database=None, suppress_health_check=list(HealthCheck)))
    print(f"{len(created)} jobs created; {len(followed)} linked calls: "
          f"{sorted(set(followed))}; statuses {statuses}")
    assert created, statuses  # the sequences made jobs ...
    assert len(set(followed)) >= 3, followed  # ... and went on with them along the links
    assert not any(code >= 500 for codes in statuses.values() for code in codes), statuses


def test_every_job_answer_links_to_every_operation_on_the_job(app):
    document = app.test_client().get("/api/v1/openapi.json").json
    operations = {op["operationId"] for path in document["paths"].values()
                  for op in path.values() if isinstance(op, dict) and "operationId" in op}
    targets = {link["operationId"] for link in JOB_LINKS.values()}
    assert targets <= operations
    job_paths = [p for p in document["paths"] if p.startswith("/jobs/{job_id}")]
    assert {document["paths"][p][m]["operationId"] for p in job_paths
            for m in ("get", "post", "delete") if m in document["paths"][p]} == targets
    submit = document["paths"]["/jobs"]["post"]["responses"]
    assert set(submit["201"]["links"]) == set(JOB_LINKS)
