"""TEST DOUBLES for the cloud location kinds: each kind's loopback stand-in (the S3 server for R2, the B2
server for B2), started in this process or each in a process of its own, with the variables that point
its kind at it. The demo and the end-to-end stack start them through `LocationDoubles`; nothing of
production knows which double serves which kind.
"""

from __future__ import annotations

import json
import subprocess
import sys

# location kind -> the double serving it (a kind of testing/servers.py)
DOUBLES = {"r2": "s3", "b2": "b2"}


def kind_env(kind: str, server, bucket: str) -> dict[str, str]:
    """The variables that point location kind `kind` at `server` (a started double) and its bucket."""
    if kind == "r2":
        return {
            "R2_ENDPOINT_URL": server.url,
            "R2_ACCESS_KEY_ID": server.access_key or "testing",
            "R2_SECRET_ACCESS_KEY": server.secret_key,
            "R2_BUCKET": bucket,
        }
    return {
        "B2_APPLICATION_KEY_ID": server.key_id,
        "B2_APPLICATION_KEY": server.key,
        "B2_BUCKET": bucket,
        "B2_REALM": server.url,
    }


class LocationDoubles:
    """The cloud kinds' doubles with one bucket each. `env`: their variables; `names`: the location kinds
    they serve; `processes`: the doubles' processes (processes=True; each watched by `watch(pid)` if
    given), else `servers` (kind -> server in this process). `stop()` stops the in-process ones."""

    def __init__(self, bucket: str, *, processes: bool = False, watch=None):
        self.env: dict[str, str] = {}
        self.servers: dict[str, object] = {}
        self.processes: list[subprocess.Popen] = []
        self.names = list(DOUBLES)
        try:
            self._start(bucket, processes, watch)
        except BaseException:  # half started: nothing is left running
            self.stop()
            self._stop_processes()
            raise

    def _start(self, bucket: str, processes: bool, watch) -> None:
        for kind, double in DOUBLES.items():
            if processes:
                # Each double in a process of its own: in one process they share a GIL with each other
                # and with whatever else runs there (a benchmark's own measuring).
                proc = subprocess.Popen(
                    [sys.executable, "-m", "backup_assets.testing.servers", double, "--bucket", bucket],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                self.processes.append(proc)
                if watch is not None:
                    watch(proc.pid)
                self.env.update(json.loads(proc.stdout.readline())["env"])
                continue
            if double == "s3":
                from .s3_server import S3Server

                server = S3Server().start()
            else:
                from .b2_server import B2Server

                server = B2Server().start()
            self.servers[kind] = server
            server.create_bucket(bucket)
            self.env.update(kind_env(kind, server, bucket))

    def stop(self) -> None:
        """Stop the doubles of this process (the caller stops `processes`, once they have been handed
        over; those of a half-started LocationDoubles are stopped here)."""
        for server in self.servers.values():
            server.stop()
        self.servers = {}

    def _stop_processes(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
