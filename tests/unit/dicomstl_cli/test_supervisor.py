"""The supervisor of `dicomstl up`, on real short-lived processes and an injected clock:
pauses that double, a limit on deaths within the window, no restart after a user error."""

from __future__ import annotations

import subprocess
import sys

from dicomstl_cli.supervisor import MAX_BACKOFF_S, Supervisor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _exits(code: int):
    def start() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"])
        proc.wait()
        return proc
    return start


def _sleeps():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_dead_child_is_restarted_after_pauses_that_double(caplog):
    clock = Clock()
    supervisor = Supervisor(max_restarts=10, window_s=3600, clock=clock)
    child = supervisor.add("worker", _exits(1))
    pauses = []
    for _ in range(7):
        assert supervisor.check()  # notices the death, plans the restart
        pauses.append(child.restart_at - clock.now)
        clock.now = child.restart_at
        assert supervisor.check()  # restarts it (it dies at once again)
    assert pauses == [1, 2, 4, 8, 16, MAX_BACKOFF_S, MAX_BACKOFF_S]
    assert "the worker process ended (exit 1); restarting it in 1 s (restart 1 of at most " \
           "10 within 3600 s)" in caplog.text
    assert "restarted the worker process" in caplog.text


def test_a_child_that_keeps_dying_stops_everything():
    clock = Clock()
    supervisor = Supervisor(max_restarts=2, window_s=60, clock=clock)
    healthy = supervisor.add("web", lambda: _sleeps())
    dying = supervisor.add("scheduler", _exits(1))
    try:
        for _ in range(2):
            assert supervisor.check()
            clock.now = dying.restart_at
            assert supervisor.check()
        assert not supervisor.check()  # the third death within 60 s
        assert supervisor.failure == "the scheduler process keeps dying (3 times within 60 s)"
        assert healthy.proc.poll() is None  # untouched until stop()
    finally:
        supervisor.stop()
    assert healthy.proc.poll() is not None


def test_deaths_outside_the_window_are_forgotten():
    clock = Clock()
    supervisor = Supervisor(max_restarts=1, window_s=60, clock=clock)
    child = supervisor.add("worker", _exits(1))
    for _ in range(5):  # one death a minute and a half: never two within the window
        assert supervisor.check()
        assert child.restart_at - clock.now == 1  # and the pause starts short again
        clock.now += 90
        assert supervisor.check()


def test_a_setting_error_is_not_restarted():
    supervisor = Supervisor(max_restarts=5, window_s=60, clock=Clock())
    supervisor.add("web", _exits(2))
    assert not supervisor.check()
    assert supervisor.failure == "the web process stopped with an error (see above)"


def test_redis_stops_after_its_clients(monkeypatch):
    supervisor = Supervisor(max_restarts=5, window_s=60)
    redis = supervisor.add("redis-server", lambda: _sleeps(), stop_last=True)
    worker = supervisor.add("worker", lambda: _sleeps())
    ended = []
    original = subprocess.Popen.wait

    def wait(proc, timeout=None):  # records the order in which the children ended
        code = original(proc, timeout)
        ended.append(proc.pid)
        return code

    monkeypatch.setattr(subprocess.Popen, "wait", wait)
    supervisor.stop()
    assert ended == [worker.proc.pid, redis.proc.pid]
    assert redis.proc.returncode == worker.proc.returncode == -15  # SIGTERM, not killed
