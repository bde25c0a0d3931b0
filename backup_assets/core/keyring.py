"""Master-key keyring from TENANT_BACKUP_KEYS: `id:base64key[,id:base64key...]`.

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
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

from .errors import ArchiveError, ConfigError

ENV_VAR = "TENANT_BACKUP_KEYS"
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
    def parse(cls, text: str | None) -> "Keyring":
        if text is None:
            raise ConfigError(f"{ENV_VAR} is not set: no key, no backup (format id:base64key, 32-byte keys)")
        text = text.strip()
        if not text:
            raise ConfigError(f"{ENV_VAR} is empty: no key, no backup")
        keys: list[MasterKey] = []
        seen: set[str] = set()
        for n, entry in enumerate(text.split(","), start=1):
            entry = entry.strip()
            where = f"{ENV_VAR} entry {n}"
            if not entry:
                raise ConfigError(f"{where} is empty (stray comma?)")
            key_id, sep, b64 = entry.partition(":")
            key_id, b64 = key_id.strip(), b64.strip()
            if not sep:
                raise ConfigError(f"{where}: expected id:base64key")
            if not _KEY_ID_RE.match(key_id):
                raise ConfigError(f"{where}: invalid key id (must match {KEY_ID_PATTERN})")
            where = f"{ENV_VAR} entry {n} (key id {key_id!r})"
            if key_id in seen:
                raise ConfigError(f"{ENV_VAR}: duplicate key id {key_id!r}")
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
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Keyring":
        env = os.environ if environ is None else environ
        return cls.parse(env.get(ENV_VAR))

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
