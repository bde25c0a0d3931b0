"""TEST DOUBLES' shared parts: the loopback check and the fault switchboard (`Faults`) the S3 and B2
test servers both use (testing/servers.py documents the faults and the command line), and `kill_at`,
which makes a process SIGKILL itself at a named step of a storage write (core/crashpoints.py)."""

from __future__ import annotations

import json
import threading

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_loopback(host: str) -> str:
    if host not in LOOPBACK:
        raise ValueError(f"test servers listen on loopback only, not {host!r}")
    return host


class Faults:
    """Thread-safe fault plan shared by the request handlers of one server."""

    FIELDS = ("fail", "status", "drop", "flip", "down", "after", "match")

    def __init__(self):
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        """Remove every fault and reset the counters."""
        with self._lock:
            self.requests = 0  # every request seen (control requests excluded)
            self.injected = 0
            self.fail = 0
            self.status = 503
            self.drop = 0
            self.flip = 0
            self.down = False
            self.after = 0
            self.match = ""

    def set(self, **kw) -> None:
        unknown = set(kw) - set(self.FIELDS)
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        if "status" in kw and int(kw["status"]) not in (500, 502, 503, 504):
            raise ValueError("status must be a 5xx code")
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, v if k in ("match", "down") else int(v))

    def state(self) -> dict:
        with self._lock:
            d = {k: getattr(self, k) for k in self.FIELDS}
            d.update(requests=self.requests, injected=self.injected)
            return d

    def decide(self, desc: str, *, has_body_out: bool) -> str | None:
        """Count the request and return the fault to inject: 'down', 'fail', 'drop', 'flip' or None."""
        with self._lock:
            self.requests += 1
            if self.down:
                self.injected += 1
                return "down"
            if self.match and self.match not in desc:
                return None
            if not (self.fail or self.drop or self.flip):
                return None
            if self.after > 0:
                self.after -= 1
                return None
            for kind in ("fail", "drop"):
                if getattr(self, kind) > 0:
                    setattr(self, kind, getattr(self, kind) - 1)
                    self.injected += 1
                    return kind
            if self.flip > 0 and has_body_out:
                self.flip -= 1
                self.injected += 1
                return "flip"
            return None

    def handle_control(self, method: str, body: bytes) -> tuple[int, dict]:
        try:
            if method == "POST":
                self.set(**(json.loads(body or b"{}")))
            elif method == "DELETE":
                self.clear()
            elif method != "GET":
                return 405, {"error": "use GET, POST or DELETE"}
        except (ValueError, TypeError) as exc:
            return 400, {"error": str(exc)}
        return 200, self.state()


def flip_byte(chunk: bytes) -> bytes:
    i = len(chunk) // 2
    return chunk[:i] + bytes([chunk[i] ^ 0x01]) + chunk[i + 1 :]


# ------------------------------------------------------------------------------------- kill points
# A deterministic SIGKILL inside a real command, for the crash tests: a test starts the command as
#   python -c "import sys; from backup_assets.testing.faults import arm_kill_point as a; a(NAME);
#              from backup_assets.cli import main; sys.exit(main(sys.argv[1:]))" ARGS...
# and the process kills itself (SIGKILL: nothing of it runs after) right after the named function
# returns. Production code knows nothing of this: the function is replaced in its module by the test's
# process alone. One entry per kill point: name -> (module, function looked up there at call time).
KILL_POINTS = {
    # the restore drill's pg_restore has committed the tenant's rows into the scratch database
    "drill-restored": ("backup_assets.core.checks.drill", "stream_into_pg_restore"),
    # rebuild has downloaded a source copy into its tb-rebuild-* folder and hashed it
    "rebuild-downloaded": ("backup_assets.core.maintenance.rebuild", "sha256_file"),
}


def arm_kill_point(name: str) -> None:
    """SIGKILL this process right after KILL_POINTS[name]'s function first returns."""
    import importlib
    import os
    import signal

    module_name, attr = KILL_POINTS[name]
    module = importlib.import_module(module_name)
    real = getattr(module, attr)

    def killing(*args, **kwargs):
        result = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(module, attr, killing)


def kill_at(point: str, nth: int = 1) -> None:
    """Make this process SIGKILL itself the `nth` time the named crash point is reached
    (core/crashpoints.py): a kill at an exact step of a write, for the kill tests (no timing)."""
    import os
    import signal

    from ..core import crashpoints

    seen = {"n": 0}

    def hook(name: str) -> None:
        if name == point:
            seen["n"] += 1
            if seen["n"] == nth:
                os.kill(os.getpid(), signal.SIGKILL)

    crashpoints.install(hook)
