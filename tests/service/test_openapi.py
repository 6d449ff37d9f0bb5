"""The API answers as its OpenAPI document says, for inputs schemathesis makes up: no server
errors, documented status codes and content types, responses that match their schemas.

Only schemathesis' "positive data acceptance" check is left out: the options have rules
across fields (a preset or a level, not both) and uploads must hold DICOM, which a schema
cannot say, so a schema-valid request may rightly get a 400.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.service.helpers import auth

PositiveData = schemathesis.checks.positive_data_acceptance


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_api_conforms_to_its_openapi_document(app, api_key):
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            # base_url: the operation's own server (/healthz, /readyz are at the site root);
            # schemathesis' WSGI transport would prefix every path with /api/v1 otherwise
            case.call_and_validate(base_url=case.operation.base_url, headers=auth(api_key),
                                   excluded_checks=[PositiveData])

        check()
        checked.append(operation.label)
    assert set(checked) >= {"POST /jobs", "GET /jobs", "GET /jobs/{job_id}",
                            "DELETE /jobs/{job_id}", "GET /jobs/{job_id}/result",
                            "POST /jobs/{job_id}/series", "GET /healthz", "GET /readyz",
                            "GET /jobs/{job_id}/preview", "GET /jobs/{job_id}/preview/{plane}.png",
                            "POST /jobs/{job_id}/level"}, checked
