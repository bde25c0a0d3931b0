"""The one way commands are registered, and what every command shares: `--json`, stdout
discipline, tenant labels.

A command is a function `handler(args, out) -> exit code`, declared with

    @command("verify", help="…", args=[arg("--tenant", metavar="ID"), …])
    def cmd_verify(args, out): …

(`"keys rewrap"` names a sub-command of `keys`). `build_parser` (cli/__init__.py) turns the
registry into argparse sub-parsers and adds `--json` to every command. `out` is an `Output`:
`out.json` says whether JSON was asked for; `out.emit(obj)` writes the command's one JSON document;
`out.text(line)` writes a line of the human output (dropped in JSON mode); `out.note(line)` writes
to stderr unless -q or --json; `out.warn(line)` always to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Arg:
    flags: tuple
    kwargs: dict


def arg(*flags, **kwargs) -> Arg:
    return Arg(flags, kwargs)


@dataclass
class Exclusive:
    args: list[Arg]
    required: bool = True


def exclusive(*args: Arg, required: bool = True) -> Exclusive:
    return Exclusive(list(args), required)


@dataclass
class Command:
    name: str  # "verify", or "keys rewrap"
    handler: Callable
    help: str
    args: list = field(default_factory=list)
    description: str | None = None


COMMANDS: dict[str, Command] = {}
GROUPS = {"keys": ("keyring tools", "ACTION")}  # commands with sub-commands: help, metavar


def command(name: str, *, help: str, args: list | None = None, description: str | None = None):
    def register(handler: Callable) -> Callable:
        if name in COMMANDS:
            raise ValueError(f"command {name!r} registered twice")
        COMMANDS[name] = Command(name, handler, help, list(args or []), description)
        return handler

    return register


def add_arguments(parser, args: list) -> None:
    for item in args:
        if isinstance(item, Exclusive):
            group = parser.add_mutually_exclusive_group(required=item.required)
            for a in item.args:
                group.add_argument(*a.flags, **a.kwargs)
        else:
            parser.add_argument(*item.flags, **item.kwargs)


def load_settings():
    """The one read of the environment for a command (core.settings.Settings), process-wide parts applied."""
    from ..core.settings import Settings

    settings = Settings.from_env()
    settings.apply_process_wide()
    return settings


def add_to(subparsers, cmd: Command):
    """Add one registered command to an argparse sub-parsers action (what build_parser does for
    each; also how a test builds a parser holding just one command). Its `func` takes (args) or
    (args, out): alone, it makes the Output and reads the settings itself."""
    leaf = cmd.name.rpartition(" ")[2]
    p = subparsers.add_parser(leaf, help=cmd.help, description=cmd.description or cmd.help)
    add_arguments(p, cmd.args)
    p.add_argument(
        "--json",
        action="store_true",
        help="only JSON on stdout, one document (docs/CLI.md); no progress, logs on stderr",
    )

    def run(args, out: "Output | None" = None) -> int:
        if out is not None:
            return cmd.handler(args, out)
        with Output(json_mode=bool(getattr(args, "json", False)), quiet=bool(getattr(args, "quiet", False))) as own:
            own.settings = load_settings()
            return cmd.handler(args, own)

    p.set_defaults(func=run)
    return p


# ------------------------------------------------------------------------------------------- output


class Output:
    """Where a command's results go. In JSON mode stdout carries exactly one JSON document: for the
    command's duration file descriptor 1 points at stderr (whatever a library, a worker process or
    pg_dump might print lands there), and `emit` writes to the saved real stdout."""

    def __init__(self, *, json_mode: bool, quiet: bool):
        self.json = json_mode
        self.quiet = quiet
        self._saved_fd: int | None = None
        self._saved_stdout = None
        self.emitted = False
        self.settings = None  # core.settings.Settings: the one read of the environment (cli.main)

    # JSON mode: stdout is reserved for the document
    def __enter__(self) -> "Output":
        if self.json:
            sys.stdout.flush()
            self._saved_stdout = sys.stdout
            try:
                real = sys.stdout.fileno() == 1
            except (AttributeError, OSError, ValueError):  # a captured stream (tests): swap the object only
                real = False
            if real:
                self._saved_fd = os.dup(1)
                os.dup2(2, 1)
            sys.stdout = sys.stderr
        return self

    def __exit__(self, *exc) -> None:
        if self._saved_stdout is not None:
            sys.stderr.flush()
            if self._saved_fd is not None:
                os.dup2(self._saved_fd, 1)
                os.close(self._saved_fd)
                self._saved_fd = None
            sys.stdout = self._saved_stdout
            self._saved_stdout = None

    def emit(self, document) -> None:
        """The command's JSON document (JSON mode only; at most once)."""
        if not self.json or self.emitted:
            return
        self.emitted = True
        text = json.dumps(document, indent=2, sort_keys=True, default=str) + "\n"
        if self._saved_fd is None:
            stream = self._saved_stdout or sys.stdout
            stream.write(text)
            stream.flush()
            return
        view = memoryview(text.encode())
        while view:
            view = view[os.write(self._saved_fd, view) :]

    def text(self, line: str = "") -> None:
        """A line of the human output on stdout (nothing in JSON mode)."""
        if not self.json:
            print(line, flush=True)

    def note(self, line: str) -> None:
        """Chatter on stderr: not with -q or --json."""
        if not (self.quiet or self.json):
            print(line, file=sys.stderr, flush=True)

    def warn(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)


def error_document(exc, exit_code: int) -> dict:
    """The JSON object printed on stdout when a command fails in JSON mode (docs/CLI.md)."""
    return {"error": {"type": type(exc).__name__, "message": str(exc), "exit_code": exit_code}}


# ------------------------------------------------------------------------------------ tenant labels


class Labels:
    """Display names from the registry (its query's second column), looked up once, on demand.

    Commands that read the registry anyway pass its records in; the others (list, verify, …) work
    from the locations alone and only try the registry when a source DSN is configured: a registry
    that cannot be read costs the names (one warning), never the command."""

    def __init__(self, names: dict[str, str] | None = None, *, out: Output | None = None):
        self._names = names
        self._out = out

    @classmethod
    def best_effort(cls, out: Output) -> "Labels":
        return cls(None, out=out)

    @property
    def names(self) -> dict[str, str]:
        if self._names is None:
            self._names = {}
            try:
                from ..core.source.tenants import tenant_names

                settings = self._out.settings if self._out is not None else None
                if settings is not None and settings.get("TENANT_BACKUP_SOURCE_DSN").strip():
                    self._names = tenant_names(settings.source)
            except Exception as exc:  # noqa: BLE001 - names are a nicety, the command goes on
                if self._out is not None:
                    self._out.warn(f"tenant-backup: warning: tenant names unavailable: {' '.join(str(exc).split())}")
        return self._names

    def name(self, tenant_id: str) -> str | None:
        return self.names.get(tenant_id)

    def label(self, tenant_id: str) -> str:
        from ..core.source.tenants import display_label

        return display_label(tenant_id, self.name(tenant_id))


def table(rows: list[tuple], out: Output) -> None:
    """Aligned plain-text columns on stdout (first row: the header)."""
    if not rows:
        return
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.text("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
