"""Run one command in this process, SIGKILLed at a named crash point (core/crashpoints.py).

    python tests/crash_runner.py POINT NTH cli ARGS...      the tenant-backup command (cli.main)
    python tests/crash_runner.py POINT NTH put CODE ARGS... Python code (a Location put, for instance)

The kill tests (tests/test_crash_writes.py) start it as a real process; it dies by SIGKILL exactly
when POINT is reached the NTH time (backup_assets/testing/faults.py kill_at), or exits normally when
it never is (a test then knows its kill point was not reached)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backup_assets.testing.faults import kill_at  # noqa: E402

point, nth, mode, *rest = sys.argv[1:]
kill_at(point, int(nth))
if mode == "cli":
    from backup_assets.cli import main

    sys.exit(main(rest))
sys.argv = [sys.argv[0], *rest[1:]]
exec(compile(rest[0], "<crash_runner>", "exec"))  # noqa: S102 - a test's own code
