"""Several processes migrating one empty database at once (pods starting together)."""

import subprocess
import sys

from sqlalchemy import inspect

from dicomstl.db import engine_for
from tests.conftest import ROOT

MIGRATE = "import sys; from dicomstl.db import migrate; migrate(sys.argv[1])"


def test_processes_migrating_at_once_leave_one_schema_and_all_succeed(database_url):
    procs = [subprocess.Popen([sys.executable, "-c", MIGRATE, database_url], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    tables = set(inspect(engine_for(database_url)).get_table_names())
    assert {"jobs", "api_keys", "ip_log", "alembic_version"} <= tables
