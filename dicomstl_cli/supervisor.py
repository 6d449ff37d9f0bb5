"""Keeping the processes of ``dicomstl up`` alive: a child that dies is started again after a
growing pause, and ``up`` gives up only when one keeps dying.

A child that exits with status 2 (a setting or a command line the user must fix) is not
restarted: that would only repeat its error message.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: The exit status of a user's error (``dicomstl_cli.main``): restarting cannot help.
USER_ERROR = 2
#: The longest pause before a restart (seconds); the pauses double from one second.
MAX_BACKOFF_S = 30.0


@dataclass
class Child:
    """One supervised process. ``start`` makes a new one; ``deaths`` are the monotonic times
    of its unexpected exits within the restart window."""

    name: str
    start: Callable[[], subprocess.Popen]
    stop_last: bool = False  # stopped after the others (Redis: its clients go first)
    proc: subprocess.Popen | None = None
    deaths: deque[float] = field(default_factory=deque)
    restart_at: float | None = None


class Supervisor:
    """Starts children, restarts the dead ones, stops them all in order.

    ``max_restarts`` deaths of one child within ``window_s`` seconds stop everything.
    """

    def __init__(self, max_restarts: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.max_restarts, self.window_s, self.clock = max_restarts, window_s, clock
        self.children: list[Child] = []
        self.failure: str | None = None  # why everything stops, when a child keeps dying

    def add(self, name: str, start: Callable[[], subprocess.Popen],
            stop_last: bool = False) -> Child:
        """Start a child and supervise it."""
        child = Child(name, start, stop_last, start())
        self.children.append(child)
        return child

    def check(self) -> bool:
        """Restart what died and is due; False when ``up`` must stop (``failure`` says why)."""
        now = self.clock()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restart_at = None
                    try:
                        child.proc = child.start()
                        log.warning("restarted the %s process (pid %d)", child.name,
                                    child.proc.pid)
                    except (OSError, RuntimeError) as exc:  # counts as one more death
                        log.warning("could not restart the %s process: %s", child.name, exc)
                continue
            code = child.proc.poll()
            if code is None:
                continue
            if code == USER_ERROR:
                self.failure = f"the {child.name} process stopped with an error (see above)"
                return False
            while child.deaths and child.deaths[0] < now - self.window_s:
                child.deaths.popleft()
            child.deaths.append(now)
            if len(child.deaths) > self.max_restarts:
                self.failure = (f"the {child.name} process keeps dying ({len(child.deaths)} "
                                f"times within {self.window_s:.0f} s)")
                return False
            pause = min(MAX_BACKOFF_S, 2.0 ** (len(child.deaths) - 1))
            child.restart_at = now + pause
            log.warning("the %s process ended (%s); restarting it in %.0f s (restart %d of at "
                        "most %d within %.0f s)", child.name, _describe(code), pause,
                        len(child.deaths), self.max_restarts, self.window_s)
        return True

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the children (all at once, the ``stop_last`` ones after the rest); kill
        those that do not end within ``timeout_s``."""
        for last in (False, True):
            live = [c.proc for c in self.children if c.stop_last is last
                    and c.proc is not None and c.proc.poll() is None]
            for proc in live:
                proc.send_signal(signal.SIGTERM)
            deadline = self.clock() + timeout_s
            for proc in live:
                try:
                    proc.wait(max(0.1, deadline - self.clock()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"
