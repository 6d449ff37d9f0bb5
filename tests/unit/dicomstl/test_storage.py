"""Where a job's files live: names without user text."""

from __future__ import annotations

from dicomstl import storage


def test_result_names_carry_no_user_text():
    assert storage.result_name("AbCdEfGhIjKlMnOp", "stl-ascii") == "dicomstl-AbCdEfGhIjKl.stl"
    assert storage.result_name("AbCdEfGhIjKlMnOp", "3mf") == "dicomstl-AbCdEfGhIjKl.3mf"
    assert storage.result_name("AbCdEfGhIjKlMnOp", "zip") == "dicomstl-AbCdEfGhIjKl.zip"
