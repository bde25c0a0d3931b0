"""Letting go at once: a restore's session is abandoned by the server within about a second of the
client's death, and Ctrl-C cancels whatever statement the server is running.

- `keepalive_dsn` adds libpq's TCP keepalives to the target DSN (the client notices a dead server);
  `let_go` sets, for the session, `client_connection_check_interval` (PostgreSQL 14+: while a
  statement runs the server polls the client's socket and aborts the statement, rolling back and
  releasing its locks, once the client is gone; without it a killed client's DELETE runs to its
  end, measured 30 s for a 30 s statement against 1.0 s with a 1 s interval) and the server side's
  TCP keepalives (a client whose machine vanished is noticed within ~25 s, idle or not).
- `CancelOnInterrupt`: while a statement runs, the main thread is blocked inside libpq and Python
  runs no signal handler; so the SIGINT is also written to a wakeup file descriptor (the C-level
  handler does it at once) that a helper thread reads to call the connection's `cancel()`. The
  server cancels the statement, the call returns, and the usual KeyboardInterrupt follows (exit
  130). `interrupted` says an interrupt came, so that an error caused by the cancel (a cancelled
  statement, COPY abandoned, pg_restore killed by the same Ctrl-C) is reported as the interrupt.
  Around the commit, `deferred` lets the commit finish: a restore that committed is reported as done.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from contextlib import contextmanager

import psycopg2.extensions

log = logging.getLogger(__name__)

CHECK_INTERVAL_MS = 1000
KEEPALIVES = {"keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5", "keepalives_count": "3"}
SERVER_KEEPALIVES = {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3"}


def keepalive_dsn(dsn: str) -> str:
    """The DSN with libpq's TCP keepalive parameters, where it does not set them itself."""
    given = psycopg2.extensions.parse_dsn(dsn)
    extra = {k: v for k, v in KEEPALIVES.items() if k not in given}
    return psycopg2.extensions.make_dsn(dsn, **extra) if extra else dsn


def let_go(conn) -> None:
    """Session settings that make the server abandon this session's work when its client dies."""
    with conn.cursor() as cur:
        if conn.server_version >= 140000:
            cur.execute("SET client_connection_check_interval = %s", (f"{CHECK_INTERVAL_MS}ms",))
        for name, value in SERVER_KEEPALIVES.items():
            cur.execute(f"SET {name} = %s", (value,))
    conn.commit()


class CancelOnInterrupt:
    """`with CancelOnInterrupt() as guard: guard.attach(conn); ...` (see the module docstring).
    Outside the main thread, or when SIGINT is ignored, it does nothing."""

    def __init__(self):
        self.interrupted = False
        self.deferred = False
        self._conn = None
        self._installed = False
        self._thread: threading.Thread | None = None
        self._pair: tuple[socket.socket, socket.socket] | None = None
        self._old_fd = -1

    def attach(self, conn) -> None:
        self._conn = conn

    def __enter__(self) -> "CancelOnInterrupt":
        if threading.current_thread() is not threading.main_thread():
            return self
        self._old_handler = signal.getsignal(signal.SIGINT)
        if not callable(self._old_handler):
            return self  # SIG_IGN / SIG_DFL set by someone on purpose: leave it
        signal.signal(signal.SIGINT, self._handler)
        self._installed = True
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        try:
            old = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError):
            reader.close()
            writer.close()
            return self
        if old != -1:  # someone else (an event loop) listens there: give it back, cancel from Python only
            signal.set_wakeup_fd(old)
            reader.close()
            writer.close()
            return self
        self._pair = (reader, writer)
        self._thread = threading.Thread(target=self._watch, name="restore-cancel", daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        reader = self._pair[0]
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGINT in data:
                self._cancel()

    def _cancel(self) -> None:
        self.interrupted = True
        conn = self._conn
        if conn is not None and not conn.closed:
            try:
                conn.cancel()
            except Exception as exc:  # noqa: BLE001 - best effort; the interrupt still ends the run
                log.debug("cancel failed: %s", exc)

    def _handler(self, signum, frame) -> None:
        self._cancel()
        if self.deferred:
            return
        self._old_handler(signum, frame)  # default_int_handler: KeyboardInterrupt

    @contextmanager
    def defer(self):
        """Interrupts only recorded, never raised, in the body (the commit)."""
        self.deferred = True
        yield

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._old_handler)
        if self._pair is not None:
            signal.set_wakeup_fd(-1)
            self._pair[1].close()  # the watcher reads EOF
            self._thread.join(timeout=5)
            self._pair[0].close()
