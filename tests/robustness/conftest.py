"""The service fixtures (real redis-server, SQLite and PostgreSQL, web and worker processes)
for the robustness tests: the same ones as tests/service."""

from tests.service.conftest import (  # noqa: F401  (fixtures, found by name)
    api_key,
    app,
    database_url,
    redis_url,
    series,
    service_env,
    settings,
    web_url,
    worker,
)
from tests.service.stripe_standin import stripe_standin  # noqa: F401
