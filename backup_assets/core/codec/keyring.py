"""Master-key keyring from TENANT_BACKUP_KEYS (`id:base64key[,id:base64key...]`) or from the file
TENANT_BACKUP_KEYS_FILE names (the same entries, one per line or comma-separated; `#` comments),
as restic's --password-file: a file readable by group or others is refused.

The first entry is the active key (it wraps the data keys of new archives); every entry can unwrap.
Error messages name the variable and what is wrong but never echo key material: only key ids that
already passed validation are quoted.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

from ..errors import ArchiveError, ConfigError

ENV_VAR = "TENANT_BACKUP_KEYS"
FILE_VAR = "TENANT_BACKUP_KEYS_FILE"
KEY_SIZE = 32
KEY_ID_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
_KEY_ID_RE = re.compile(KEY_ID_PATTERN + r"\Z")


@dataclass(frozen=True)
class MasterKey:
    id: str
    key: bytes = field(repr=False)  # repr=False: keys must not end up in logs or tracebacks


def validate_key_id(key_id: str) -> str:
    if not isinstance(key_id, str) or not _KEY_ID_RE.match(key_id):
        raise ConfigError(f"{ENV_VAR}: invalid key id (must match {KEY_ID_PATTERN})")
    return key_id


class Keyring:
    """An ordered set of master keys; `active` (the first) encrypts, all decrypt."""

    def __init__(self, keys: Sequence[MasterKey]):
        if not keys:
            raise ConfigError(f"{ENV_VAR} holds no keys")
        seen: dict[str, MasterKey] = {}
        for k in keys:
            validate_key_id(k.id)
            if not isinstance(k.key, bytes) or len(k.key) != KEY_SIZE:
                raise ConfigError(f"{ENV_VAR}: key {k.id!r} must be {KEY_SIZE} bytes")
            if k.id in seen:
                raise ConfigError(f"{ENV_VAR}: duplicate key id {k.id!r}")
            seen[k.id] = k
        self._keys = tuple(keys)
        self._by_id = seen

    @classmethod
    def parse(cls, text: str | None, *, source: str = ENV_VAR) -> "Keyring":
        """`source` names where the text came from, in error messages."""
        if text is None:
            raise ConfigError(
                f"{source} is not set: no key, no backup (format id:base64key, 32-byte keys;"
                f" or a file named by {FILE_VAR})"
            )
        text = text.strip()
        if not text:
            raise ConfigError(f"{source} is empty: no key, no backup")
        keys: list[MasterKey] = []
        seen: set[str] = set()
        for n, entry in enumerate(text.split(","), start=1):
            entry = entry.strip()
            where = f"{source} entry {n}"
            if not entry:
                raise ConfigError(f"{where} is empty (stray comma?)")
            key_id, sep, b64 = entry.partition(":")
            key_id, b64 = key_id.strip(), b64.strip()
            if not sep:
                raise ConfigError(f"{where}: expected id:base64key")
            if not _KEY_ID_RE.match(key_id):
                raise ConfigError(f"{where}: invalid key id (must match {KEY_ID_PATTERN})")
            where = f"{source} entry {n} (key id {key_id!r})"
            if key_id in seen:
                raise ConfigError(f"{source}: duplicate key id {key_id!r}")
            if not b64:
                raise ConfigError(f"{where}: key is empty")
            try:
                raw = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError(f"{where}: key is not valid standard base64") from None
            if len(raw) != KEY_SIZE:
                raise ConfigError(f"{where}: key decodes to {len(raw)} bytes, need {KEY_SIZE}")
            seen.add(key_id)
            keys.append(MasterKey(key_id, raw))
        return cls(keys)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Keyring":
        """From the variables TENANT_BACKUP_KEYS / TENANT_BACKUP_KEYS_FILE of `env` (Settings.keyring)."""
        path = (env.get(FILE_VAR) or "").strip()
        if path:
            if (env.get(ENV_VAR) or "").strip():
                raise ConfigError(f"both {ENV_VAR} and {FILE_VAR} are set: keep one (the file is the safer)")
            return cls.from_file(path)
        return cls.parse(env.get(ENV_VAR))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Keyring":
        """The keyring from a file only its owner can read: entries one per line or comma-separated,
        blank lines and `#` comments ignored."""
        where = f"{FILE_VAR}={path}"
        try:
            with open(path, "rb") as handle:
                mode = os.fstat(handle.fileno()).st_mode
                if not stat.S_ISREG(mode):
                    raise ConfigError(f"{where}: not a regular file")
                if mode & 0o077:
                    raise ConfigError(
                        f"{where} is readable or writable by group or others (mode {mode & 0o777:04o}):"
                        " refused; chmod 600 it"
                    )
                raw = handle.read(1 << 20)
        except FileNotFoundError:
            raise ConfigError(f"{where}: no such file") from None
        except PermissionError:
            raise ConfigError(f"{where}: permission denied") from None
        except IsADirectoryError:
            raise ConfigError(f"{where}: not a regular file") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{where}: not UTF-8 text") from None
        entries = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        return cls.parse(",".join(e.strip(",") for e in entries if e.strip(",")), source=FILE_VAR)

    @property
    def active(self) -> MasterKey:
        return self._keys[0]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(k.id for k in self._keys)

    def get(self, key_id: str) -> MasterKey:
        try:
            return self._by_id[key_id]
        except KeyError:
            raise ArchiveError(
                f"master key {key_id!r} is not in {ENV_VAR} (keyring holds: {', '.join(self.ids)})"
            ) from None

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._by_id

    def __iter__(self) -> Iterator[MasterKey]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"Keyring(ids={list(self.ids)!r})"


def generate_entry(key_id: str | None = None) -> str:
    """A new `id:base64key` entry (prepend it to TENANT_BACKUP_KEYS to make it active)."""
    if key_id is None:
        key_id = "k" + _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d") + "-" + secrets.token_hex(3)
    validate_key_id(key_id)
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_SIZE)).decode('ascii')}"
