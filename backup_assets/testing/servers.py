"""TEST DOUBLES: loopback S3 and B2 endpoints with fault injection, and their command line.

    python -m backup_assets.testing.servers s3 --port 9000 [--bucket NAME]... [--env-file FILE]
    python -m backup_assets.testing.servers b2 --port 9001 [--bucket NAME]... [--env-file FILE]

Each prints one JSON line once it listens (its URL, and the R2_* / B2_* variables that point the
project at it); --env-file also writes those variables to FILE (`set -a; . FILE; set +a`), created
only then, so a script can start it in the background and wait for the file. Objects live in memory.

Both listen on 127.0.0.1 only. Faults are driven from Python (`server.faults`) or over HTTP, so
other processes (the demo, end-to-end tests) can drive them too:

    GET    /__faults__   current faults and request counters (JSON)
    POST   /__faults__   set faults, e.g. {"fail": 3, "status": 503} or {"down": true}
    DELETE /__faults__   clear all faults

Fault fields (all optional; counts are consumed one per matching request):
    fail:   N  answer the next N requests with `status` (500 or 503, default 503)
    drop:   N  drop the connection mid-body (mid-request for uploads, mid-response for downloads)
    flip:   N  flip one byte in the next N download bodies
    down:   true -> every connection is closed at once without an answer (like a dead server)
    after:  K  let K matching requests pass untouched before the counts above start to apply
    match:  substring of "METHOD /path?query" a request must contain to be affected
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from .faults import LOOPBACK, Faults, check_loopback, flip_byte  # noqa: F401 - re-exported


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m backup_assets.testing.servers", description="Loopback S3/B2 TEST DOUBLES with fault injection."
    )
    ap.add_argument("kind", choices=["s3", "b2"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    ap.add_argument("--key-id", default=None, help="access key id / B2 application key id")
    ap.add_argument("--key", default=None, help="secret access key / B2 application key")
    ap.add_argument("--part-size", type=int, default=None, help="B2: recommended part size")
    ap.add_argument("--env-file", default=None, help="write the R2_*/B2_* variables to this file once listening")
    args = ap.parse_args(argv)
    try:
        check_loopback(args.host)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.kind == "s3":
        from .s3_server import S3Server

        server = S3Server(
            host=args.host, port=args.port, access_key=args.key_id or "testing", secret_key=args.key or "testing"
        )

        def env():
            return {
                "R2_ENDPOINT_URL": server.url,
                "R2_ACCESS_KEY_ID": server.access_key,
                "R2_SECRET_ACCESS_KEY": server.secret_key,
                "R2_BUCKET": (args.bucket or [""])[0],
            }
    else:
        from .b2_server import B2Server

        kw = {"recommended_part_size": args.part_size} if args.part_size else {}
        server = B2Server(host=args.host, port=args.port, key_id=args.key_id, key=args.key, **kw)

        def env():
            return {
                "B2_REALM": server.url,
                "B2_APPLICATION_KEY_ID": server.key_id,
                "B2_APPLICATION_KEY": server.key,
                "B2_BUCKET": (args.bucket or [""])[0],
            }

    server.start()
    for b in args.bucket:
        server.create_bucket(b)
    # One JSON line on stdout: a parent process reads the URL and credentials from it.
    print(json.dumps({"kind": args.kind, "url": server.url, "env": env()}), flush=True)
    if args.env_file:  # whole or not at all: a script waits for it to appear
        import os
        import shlex

        tmp = f"{args.env_file}.tmp"
        with open(tmp, "w") as handle:
            handle.write("".join(f"{k}={shlex.quote(v)}\n" for k, v in env().items()))
        os.replace(tmp, args.env_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):  # a timed wait keeps signal handling prompt
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
