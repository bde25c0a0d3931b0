"""Error classes. Every failure a user can cause or meet is one of these, with a one-line message."""


class TenantBackupError(Exception):
    """Base class: the CLI prints str(err) on one line and exits non-zero."""

    exit_code = 1


class ConfigError(TenantBackupError):
    """Missing or malformed configuration (environment variables, keyring)."""

    exit_code = 2


class InvalidTenantId(TenantBackupError):
    """A tenant id that does not match the configured pattern; refused before any use."""

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


class DatabaseUnreachable(TenantBackupError):
    """The database cannot be connected to."""

    exit_code = 7


class StorageError(TenantBackupError):
    """A storage location failed. Subclasses say whether retrying can help."""

    exit_code = 8


class NotFound(StorageError):
    """The backup (archive or manifest) does not exist in the location. Not retried."""


class TransientStorageError(StorageError):
    """Timeouts, connection resets, 5xx, throttling: the retry wrapper retries these (bounded)."""


class PermanentStorageError(StorageError):
    """Wrong credentials, missing bucket, refused request: retrying cannot help."""


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


def one_line(text: object, limit: int | None = None) -> str:
    """`text` (or str(an exception)) on one line, runs of whitespace as one space; at most `limit` characters."""
    line = " ".join(str(text).split())
    return line if limit is None else line[:limit]
