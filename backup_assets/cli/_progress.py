"""Progress displays (rich) for long commands, on stderr only, and only for a person watching:
never with --json or -q, never when stderr is not a terminal (cron, CI, a pipe: the plain lines
the commands print then are the record), never with TERM=dumb.

`Counter`: items done of a total (tenants, copies), failures so far, rate and ETA.
`Transfer`: bytes, rate, and the ETA when the total is known.
Both are context managers; when the display is off they do nothing but route `log` lines to the
command's ordinary stderr notes.
"""

from __future__ import annotations

import os
import sys

from ._command import Output


def enabled(out: Output) -> bool:
    if out.json or out.quiet or os.environ.get("TERM") == "dumb":
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _Display:
    def __init__(self, out: Output):
        self.out = out
        self.on = enabled(out)
        self._progress = None
        self._task = None

    def _columns(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def _start(self, description: str, total, **fields):
        if not self.on:
            return
        from rich.console import Console
        from rich.progress import Progress

        console = Console(file=sys.stderr, highlight=False)
        try:  # stdout on the same terminal: its lines go above the display; piped: left alone
            same_terminal = sys.stdout.isatty()
        except (AttributeError, ValueError):
            same_terminal = False
        self._progress = Progress(
            *self._columns(),
            console=console,
            transient=False,
            refresh_per_second=8,
            redirect_stdout=same_terminal,
            redirect_stderr=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, **fields)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def log(self, line: str, *, always: bool = False) -> None:
        """A line above the display (or, without one, a stderr note; `always`: even with -q/--json)."""
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        elif always:
            self.out.warn(line)
        else:
            self.out.note(line)


class Counter(_Display):
    def __init__(self, out: Output, description: str, total: int | None = None, unit: str = "tenants"):
        super().__init__(out)
        self.description, self.total, self.unit = description, total, unit
        self.done = self.failed = 0

    def _columns(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        return (
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(self.unit + " · {task.fields[failed]} failed ·"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )

    def __enter__(self) -> "Counter":
        self._start(self.description, self.total, failed=0)
        return self

    def set_total(self, total: int) -> None:
        self.total = total
        if self._progress is not None:
            self._progress.update(self._task, total=total)

    def advance(self, ok: bool = True) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        if self._progress is not None:
            self._progress.update(self._task, advance=1, failed=self.failed)


class Transfer(_Display):
    def __init__(self, out: Output, description: str, total: int | None = None):
        super().__init__(out)
        self.description, self.total = description, total

    def _columns(self):
        from rich.filesize import decimal
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            ProgressColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class Rate(ProgressColumn):
            """rich's recent-window speed, else the average so far (a short transfer has one sample)."""

            def render(self, task):
                speed = task.finished_speed or task.speed
                if not speed and task.elapsed:
                    speed = task.completed / task.elapsed
                return Text(f"{decimal(int(speed))}/s" if speed else "?/s", style="progress.data.speed")

        # The ETA column shows -:--:-- while the total is unknown (an export's size is known at its end).
        return (
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(),
            Rate(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )

    def __enter__(self) -> "Transfer":
        self._start(self.description, self.total)
        return self

    def update(self, completed: int | None = None, *, total: int | None = None, description: str | None = None) -> None:
        if self._progress is not None:
            kwargs = {} if completed is None else {"completed": completed}
            if total is not None:
                kwargs["total"] = total
            if description is not None:
                kwargs["description"] = description
            self._progress.update(self._task, **kwargs)
