"""Failures, both ways: a permanent error of the core becomes a Failure that Dagster does not retry,
and a failed step is reported as the one line of the error that caused it.

Raising: a step with a RetryPolicy retries ANY exception (Dagster wraps it in RetryRequestedFromPolicy,
dagster/_core/execution/plan/utils.py) unless it is a `Failure(allow_retries=False)`. So the steps run
the core under `permanent_failures()`: a TenantBackupError whose class is not transient
(core/errors.py), or an OS error retrying cannot fix (no space left on device, read-only file system,
permission denied: core/files.py), fails the step at once; transient ones go on to the retry policy.

Reporting: when the retries are used up, the step's failure event carries Dagster's wrapper, whose
message is `Exceeded max_retries of N` (dagster/_core/execution/plan/execute_plan.py), with the real
error as its cause. `error_line` walks that chain to the error that says what failed.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

from dagster import Failure

from ..core.errors import TenantBackupError, first_line, is_transient
from ..core.files import local_write_error

LINE_LIMIT = 500


def permanent_failure(exc: BaseException, path: object = None, *, local_files: bool = True) -> Failure | None:
    """Failure(one line, allow_retries=False) for an error retrying cannot fix; None for the others
    (transient, or not ours: the step's retry policy decides). `local_files`: the code wrote files on
    this machine, so an OS error such as ENOSPC in the error's chain is permanent too, named with the
    file (`path` when the OS error names none)."""
    if isinstance(exc, Failure):
        return None
    disk = local_write_error(exc, path) if local_files else None
    if disk is not None:
        line, kind = str(disk), type(disk).__name__
    elif isinstance(exc, TenantBackupError) and not is_transient(exc):
        line, kind = first_line(exc, LINE_LIMIT) or type(exc).__name__, type(exc).__name__
    else:
        return None
    return Failure(line, metadata={"error": kind}, allow_retries=False)


@contextmanager
def permanent_failures(path: object = None, *, local_files: bool = True) -> Iterator[None]:
    """Run core code: a permanent error leaves as Failure(allow_retries=False) raised from it; a
    transient one (or a Failure) leaves unchanged."""
    try:
        yield
    except Exception as exc:
        failure = permanent_failure(exc, path, local_files=local_files)
        if failure is None:
            raise
        raise failure from exc


# Dagster's wrappers around the error that failed a step: they say that it failed, not what failed.
_RETRY_WRAPPERS = {"RetryRequested", "RetryRequestedFromPolicy", "DagsterMaxRetriesExceededError"}
_EXCEEDED = re.compile(r"Exceeded max_retries of (\d+)")
_CLASS_PREFIX = re.compile(r"^[A-Za-z_][\w.]*: ")


def _is_wrapper(error) -> bool:
    name = error.cls_name or ""
    return name in _RETRY_WRAPPERS or (name.startswith("Dagster") and name.endswith("Error"))


def _message(error) -> str:
    """The error's message without the `module.Class: ` that Python's traceback puts before it."""
    text = (error.message or "").strip()
    match = _CLASS_PREFIX.match(text)
    if match and error.cls_name and match.group(0)[:-2].split(".")[-1] == error.cls_name:
        text = text[match.end() :]
    return first_line(text, LINE_LIMIT)


def error_line(error) -> str:
    """One line naming what failed, from a step failure's SerializableErrorInfo: the first error of its
    cause chain that is not a Dagster wrapper (`Exceeded max_retries of N`, `Error occurred while
    executing op …`), its first line without the class name; `(after N retries)` when the step was
    retried. A chain of wrappers only: the deepest one that is not a retry wrapper, else the outermost."""
    if error is None:
        return "step failed"
    chain, current = [], error
    while current is not None and len(chain) < 20:
        chain.append(current)
        current = current.cause or current.context
    retries = next((int(m.group(1)) for e in chain if (m := _EXCEEDED.search(e.message or ""))), None)
    chosen = next((e for e in chain if not _is_wrapper(e)), None)
    if chosen is None:
        chosen = next((e for e in reversed(chain) if (e.cls_name or "") not in _RETRY_WRAPPERS), error)
    line = _message(chosen) or chosen.cls_name or "step failed"
    return f"{line} (after {retries} retries)" if retries and chosen is not error else line


def exception_line(exc: BaseException) -> str:
    """One line naming what failed, from an exception caught in a step (a Failure's description; a
    permanent error's line; else the error's first line)."""
    if isinstance(exc, Failure):
        return first_line(exc.description or "", LINE_LIMIT) or "failed"
    failure = permanent_failure(exc)
    line = failure.description if failure is not None else first_line(exc, LINE_LIMIT) or type(exc).__name__
    retried = [n for n in getattr(exc, "__notes__", ()) if n.startswith("(after ")]  # defs/backup/assets.py
    return f"{line} {retried[0]}" if retried else line


def step_failure_line(event) -> str:
    """error_line of a STEP_FAILURE event (its error, else its message)."""
    data = getattr(event, "event_specific_data", None)
    error = getattr(data, "error", None)
    if error is not None:
        return error_line(error)
    return first_line(getattr(event, "message", None) or "", LINE_LIMIT) or "step failed"
