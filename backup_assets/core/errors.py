"""Error classes. Every failure a user can cause or meet is one of these, with a one-line message.

`transient` says whether trying again later can help (a server down, a network hiccup): the Dagster
steps retry those (TENANT_BACKUP_RETRIES) and fail every other one at once, naming it."""


class TenantBackupError(Exception):
    """Base class: the CLI prints str(err) on one line and exits non-zero."""

    exit_code = 1
    transient = False  # permanent unless a subclass says otherwise: retrying cannot help


class ConfigError(TenantBackupError):
    """Missing or malformed configuration (environment variables, keyring)."""

    exit_code = 2


class InvalidTenantId(TenantBackupError):
    """A tenant id that does not match the configured pattern; refused before any use."""

    exit_code = 2


class InvalidBackupId(TenantBackupError):
    """A backup id that is not one a location accepts (`..`, a path separator, ...); refused before
    any use, as bad input (not a storage failure)."""

    exit_code = 2


class UnknownTenant(TenantBackupError):
    """The tenant registry does not return this tenant (and --force was not given)."""

    exit_code = 3


class SafetyCheckFailed(TenantBackupError):
    """Isolation cannot be proven (RLS missing, privileged role, ...): nothing is dumped."""

    exit_code = 4


class DumpFailed(TenantBackupError):
    """pg_dump (or the database) failed; the message carries pg_dump's stderr."""

    exit_code = 5


class ArchiveError(TenantBackupError):
    """An archive is malformed, truncated, tampered with, or cannot be decrypted with the keyring."""

    exit_code = 6


class ManifestNotAuthentic(ArchiveError):
    """A manifest whose seal does not verify under the keyring: a sealed field was edited, or it was
    sealed with a key the keyring lacks (core/archive/seal.py). Refused before any use."""


class DatabaseUnreachable(TenantBackupError):
    """The database cannot be connected to."""

    exit_code = 7
    transient = True


class StorageError(TenantBackupError):
    """A storage location failed. Subclasses say whether retrying can help."""

    exit_code = 8


class NotFound(StorageError):
    """The backup (archive or manifest) does not exist in the location. Not retried."""


class TransientStorageError(StorageError):
    """Timeouts, connection resets, 5xx, throttling: the retry wrapper retries these (bounded)."""

    transient = True


class PermanentStorageError(StorageError):
    """Wrong credentials, missing bucket, refused request: retrying cannot help."""


class LocalWriteError(PermanentStorageError):
    """Writing a file on this machine failed in a way retrying cannot fix (no space left on device,
    quota exceeded, read-only file system, permission denied): the staging archive in the work
    directory, a local location's copy. The message is `<reason>: <path>` (core/files.py)."""


class CorruptObject(StorageError):
    """A stored object's bytes do not match its recorded SHA-256 (or size). Never retried silently."""


class ScratchDatabaseError(TenantBackupError):
    """The scratch server of a restore drill refused to create, query or drop the scratch database
    (missing CREATEDB, server down, ...): the drill could not run, which says nothing about the archive."""

    exit_code = 9


class RestoreError(TenantBackupError):
    """A restore failed; in --replace mode its single transaction was rolled back (nothing changed)."""

    exit_code = 10


class RestoreRefused(RestoreError):
    """The restore was refused before anything was written: target not empty, role not allowed to
    write under row-level security, schema that does not match the backup, ..."""


def is_transient(exc: BaseException) -> bool:
    """Whether trying again later can help: True for the transient classes above only."""
    return bool(getattr(exc, "transient", False)) and isinstance(exc, TenantBackupError)


def one_line(text: object, limit: int | None = None) -> str:
    """`text` (or str(an exception)) on one line, runs of whitespace as one space; at most `limit` characters."""
    line = " ".join(str(text).split())
    return line if limit is None else line[:limit]


def first_line(text: object, limit: int | None = 500) -> str:
    """The first non-blank line of `text` (or str(an exception)), whitespace collapsed: what a
    failure is reported as when the message carries a child's stderr (`pg_dump failed (exit 1):
    pg_dump: error: …` and then pg_dump's hints)."""
    for line in str(text).splitlines():
        if line.strip():
            return one_line(line, limit)
    return ""


def first_error(text: str) -> str:
    """A client program's stderr with its first error line first (the cause), the rest after it:
    `pg_restore: error: ...` rather than the warnings or progress lines printed before it."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        lowered = line.lower()
        if "error" in lowered or "fatal" in lowered or "unrecognized" in lowered or "invalid" in lowered:
            return " ".join([line, *lines[:i], *lines[i + 1 :]])
    return " ".join(lines)
