"""The manifest: JSON stored beside every copy of an archive (docs/MANIFEST.md).

`Manifest` is the one reader and writer of it, and the only module that reads its fields by name:
`Manifest.from_dict` / `from_json` parse one (any manifest tenant-backup ever wrote; fields it does
not know, e.g. a location's own, are kept and written back unchanged), `validate` checks what a
restore, verify or drill relies on, `to_dict` / `to_json` give back the same JSON (a field absent
when read stays absent; one read as null stays null). Everything else holds `Manifest` objects:
export returns one, a location stores and returns one (core/locations/base.py), readers use its
typed parts (`ArchiveInfo`, `TableKinds`, `SourceInfo`, `DrillRecord`, `SealInfo`).

The schema is versioned (`manifest_version`, `SCHEMA_VERSIONS`): a manifest of a version this
tenant-backup does not know (a newer one) is refused when parsed, with an ArchiveError saying so.
Parsing checks each known field's JSON type (ArchiveError otherwise) but requires none: what is
required is `validate`'s business, so a partial manifest (a test's) still loads.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from ..errors import ArchiveError
from .seal import check_seal, seal_manifest

MANIFEST_VERSION = 1
# The schema versions this tenant-backup reads (a manifest without the field predates it: version 1).
SCHEMA_VERSIONS = (1,)
# What every location accepts as a backup id (a path segment / key part; '..' refused separately).
BACKUP_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# What new_backup_id makes: UTC start time + 8 random hex digits (sorts by time).
NEW_BACKUP_ID_RE = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")
SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
TABLE_KINDS = ("tenant", "rls_child", "shared", "excluded")
DEFAULT_TENANT_COLUMN = "tenant_id"


def new_backup_id(now: datetime | None = None) -> str:
    """Sortable by time, unique without coordination: 20261125T030000Z-1a2b3c4d."""
    now = now or datetime.now(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)


def is_backup_id(value: object) -> bool:
    return isinstance(value, str) and bool(BACKUP_ID_RE.fullmatch(value)) and ".." not in value


# ------------------------------------------------------------------------------ JSON types


def _is_int(v) -> bool:
    return type(v) is int


_CHECKS = {
    "any": (lambda v: True, "a JSON value"),  # checked by its reader (the seal: core/archive/seal.py)
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (_is_int, "an integer"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "number": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "object": (lambda v: isinstance(v, dict), "an object"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "names": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of table names"),
    "counts": (
        lambda v: isinstance(v, dict) and all(isinstance(k, str) and _is_int(n) for k, n in v.items()),
        'an object of "schema.table": rows',
    ),
}


def _parse_fields(cls, raw: Mapping[str, Any], where: str, nested: Mapping[str, Any] | None = None) -> dict:
    """kwargs for dataclass `cls` from `raw`: known fields type-checked, the rest in `extra`, keys
    read as null in `nulls`."""
    if not isinstance(raw, Mapping):
        raise ArchiveError(f"{where} is not a JSON object (is this a tenant-backup manifest?)")
    kwargs: dict[str, Any] = {}
    nulls = set()
    known = {f.name: f.metadata.get("json") for f in dataclasses.fields(cls) if f.metadata.get("json")}
    for name, kind in known.items():
        if name not in raw:
            continue
        value = raw[name]
        if value is None:
            nulls.add(name)
            continue
        if nested and name in nested:
            kwargs[name] = nested[name].from_dict(value)
            continue
        ok, what = _CHECKS[kind]
        if not ok(value):
            raise ArchiveError(f"manifest field {where + '.' if where != 'manifest' else ''}{name} is not {what}")
        kwargs[name] = dict(value) if isinstance(value, dict) else list(value) if isinstance(value, list) else value
    kwargs["extra"] = {k: v for k, v in raw.items() if k not in known}
    kwargs["nulls"] = frozenset(nulls)
    return kwargs


def _emit_fields(obj) -> dict:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if not f.metadata.get("json"):
            continue
        value = getattr(obj, f.name)
        if value is None:
            if f.name in obj.nulls:
                out[f.name] = None
            continue
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        elif isinstance(value, dict):
            value = dict(value)
        elif isinstance(value, list):
            value = list(value)
        out[f.name] = value
    out.update(obj.extra)
    return out


def _json(kind: str, default=None):
    return field(default=default, metadata={"json": kind})


# ------------------------------------------------------------------------------ the parts


@dataclass
class ArchiveInfo:
    """manifest["archive"]: the archive file as written (size/sha256/key_id change on `keys rewrap`)."""

    file: str | None = _json("str")
    size: int | None = _json("int")
    sha256: str | None = _json("str")
    key_id: str | None = _json("str")
    codec: str | None = _json("str")
    zstd_level: int | None = _json("int")
    cipher: str | None = _json("str")
    segment_size: int | None = _json("int")
    extra: dict = field(default_factory=dict)
    nulls: frozenset = frozenset()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "archive") -> "ArchiveInfo":
        if not isinstance(raw, Mapping):
            raise ArchiveError("manifest has no 'archive' object (is this a tenant-backup manifest?)")
        return cls(**_parse_fields(cls, raw, where))

    def to_dict(self) -> dict:
        return _emit_fields(self)


@dataclass
class TableKinds:
    """manifest["table_kinds"]: how the export classified each table (docs/ISOLATION.md)."""

    tenant: list[str] | None = _json("names")  # tenant column + RLS
    rls_child: list[str] | None = _json("names")  # RLS, no tenant column
    shared: list[str] | None = _json("names")  # dumped whole
    excluded: list[str] | None = _json("names")  # schema only
    extra: dict = field(default_factory=dict)
    nulls: frozenset = frozenset()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "table_kinds") -> "TableKinds":
        return cls(**_parse_fields(cls, raw, where))

    def to_dict(self) -> dict:
        return _emit_fields(self)

    def of(self, kind: str) -> list[str]:
        """The tables of one kind ([] when the manifest lists none)."""
        value = getattr(self, kind, None) if kind in TABLE_KINDS else self.extra.get(kind)
        return list(value or [])

    def kind_of(self) -> dict[str, str]:
        """table -> its kind, for every table listed."""
        out: dict[str, str] = {}
        for kind in (*TABLE_KINDS, *self.extra):
            for table in self.of(kind):
                out[table] = kind
        return out


@dataclass
class SourceInfo:
    """manifest["source"]: the database and session the export read."""

    database: str | None = _json("str")
    server_version: str | None = _json("str")
    role: str | None = _json("str")
    tenant_column: str | None = _json("str")
    tenant_setting: str | None = _json("str")
    extra: dict = field(default_factory=dict)
    nulls: frozenset = frozenset()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "source") -> "SourceInfo":
        return cls(**_parse_fields(cls, raw, where))

    def to_dict(self) -> dict:
        return _emit_fields(self)


@dataclass
class DrillRecord:
    """manifest["drill"]: the restore drill that proved the archive (core/checks/drill.py): the scratch
    server's major, the source's, whether they are the same, whether the drill passed, and the SHA-256
    of the archive it restored (set after the export, not sealed)."""

    server_major: int | None = _json("int")
    source_major: int | None = _json("int")
    matches_source: bool | None = _json("bool")
    ok: bool | None = _json("bool")
    sha256: str | None = _json("str")
    extra: dict = field(default_factory=dict)
    nulls: frozenset = frozenset()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "drill") -> "DrillRecord":
        return cls(**_parse_fields(cls, raw, where))

    def to_dict(self) -> dict:
        return _emit_fields(self)


@dataclass
class SealInfo:
    """manifest["seal"]: alg, key_id, mac, version (core/archive/seal.py checks them: not here, so
    that an edited seal is refused as unauthentic, exit code 6, with its reason)."""

    alg: Any = _json("any")
    key_id: Any = _json("any")
    mac: Any = _json("any")
    version: Any = _json("any")
    extra: dict = field(default_factory=dict)
    nulls: frozenset = frozenset()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "seal") -> "SealInfo":
        return cls(**_parse_fields(cls, raw, where))

    def to_dict(self) -> dict:
        return _emit_fields(self)


_PARTS = {
    "archive": ArchiveInfo,
    "table_kinds": TableKinds,
    "source": SourceInfo,
    "drill": DrillRecord,
    "seal": SealInfo,
}


@dataclass
class Manifest:
    """One backup's manifest (docs/MANIFEST.md). Fields are None when the manifest lacks them."""

    manifest_version: int | None = _json("int")
    tenant_id: str | None = _json("str")
    backup_id: str | None = _json("str")
    created_at: str | None = _json("str")
    registry_listed: bool | None = _json("bool")
    archive: ArchiveInfo | None = _json("object")
    raw_size: int | None = _json("int")
    compressed_size: int | None = _json("int")
    compression_ratio: float | None = _json("number")
    tables: dict[str, int] | None = _json("counts")  # "schema.table": rows
    isolation: dict | None = _json("object")  # dump_rows_counted, tenant_values_checked
    table_kinds: TableKinds | None = _json("object")
    source: SourceInfo | None = _json("object")
    pg_dump_version: str | None = _json("str")
    notes: list | None = _json("list")
    timings: dict | None = _json("object")  # preflight_s, dump_s, total_s
    drill: DrillRecord | None = _json("object")  # the restore drill that proved the archive
    # alg, key_id, mac, version: the HMAC over the fields readers act on (core/archive/seal.py).
    seal: SealInfo | None = _json("object")
    extra: dict = field(default_factory=dict)  # fields of others (a location's own), kept as they are
    nulls: frozenset = frozenset()  # known fields read as null (written back as null)

    # -- reading and writing -------------------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "Manifest":
        """The one parser. ArchiveError for a field of the wrong JSON type, and for a manifest of a
        schema version this tenant-backup does not read (written by a newer one)."""
        if isinstance(raw, Mapping):
            version = raw.get("manifest_version")
            if _is_int(version) and version > max(SCHEMA_VERSIONS):
                raise ArchiveError(
                    f"manifest_version {version} is newer than this tenant-backup reads (up to {max(SCHEMA_VERSIONS)}):"
                    " written by a newer tenant-backup; upgrade to read it"
                )
        return cls(**_parse_fields(cls, raw, "manifest", _PARTS))

    @classmethod
    def from_json(cls, text: str | bytes) -> "Manifest":
        try:
            raw = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ArchiveError(f"manifest is not JSON: {exc}") from None
        return cls.from_dict(raw)

    def to_dict(self) -> dict:
        return _emit_fields(self)

    def to_json(self) -> str:
        """The stored form: sorted keys, two-space indent (what locations write as manifest.json)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def copy(self, **changes) -> "Manifest":
        """A deep copy, with `changes` applied (e.g. tenant_id=...)."""
        return dataclasses.replace(copy.deepcopy(self), **changes)

    def with_archive(self, **changes) -> "Manifest":
        """A copy whose archive fields `changes` (size, sha256, key_id after `keys rewrap`) replace."""
        new = copy.deepcopy(self)
        new.archive = dataclasses.replace(new.archive or ArchiveInfo(), **changes)
        return new

    # -- what readers rely on ------------------------------------------------------------------

    def stated_checksum(self) -> tuple[str | None, int | None]:
        """(sha256 lower case, size) as far as the manifest states them, without validating them:
        what a location compares the file it stores with (None where not stated)."""
        arch = self.archive or ArchiveInfo()
        sha = arch.sha256.lower() if isinstance(arch.sha256, str) else None
        return sha, arch.size if _is_int(arch.size) else None

    def checksum(self) -> tuple[str, int]:
        """(sha256 lower case, size) of the archive file; ArchiveError if the manifest lacks them."""
        if self.archive is None:
            raise ArchiveError("manifest has no 'archive' object (is this a tenant-backup manifest?)")
        sha, size = self.archive.sha256, self.archive.size
        if not isinstance(sha, str) or not SHA256_RE.fullmatch(sha) or not _is_int(size) or size < 0:
            raise ArchiveError("manifest lacks archive.sha256 (64 hex digits) or archive.size (integer)")
        return sha.lower(), size

    def check_identity(self, tenant_id: str, backup_id: str, where: str | None = None) -> None:
        """The manifest stored under tenant/backup describes that tenant and backup (one copied under
        another tenant's prefix would otherwise restore one tenant's data as another's)."""
        if self.tenant_id != tenant_id or self.backup_id != backup_id:
            raise ArchiveError(
                f"{where + ': ' if where else ''}manifest describes tenant {self.tenant_id!r} backup"
                f" {self.backup_id!r}, but is stored as {tenant_id}/{backup_id}"
            )

    def validate(
        self, *, tenant_id: str | None = None, backup_id: str | None = None, where: str = "manifest"
    ) -> "Manifest":
        """Everything a restore, verify or drill relies on, or ArchiveError naming what is wrong:
        version 1 (when given), tenant and backup ids (and equal to the ones expected, when given),
        the archive's sha256/size, the per-table rows and the table kinds. Returns self."""
        if self.manifest_version is not None and self.manifest_version != MANIFEST_VERSION:
            raise ArchiveError(
                f"{where}: manifest_version {self.manifest_version} is not supported"
                f" (this tenant-backup reads {MANIFEST_VERSION})"
            )
        if tenant_id is not None or backup_id is not None:
            self.check_identity(
                tenant_id if tenant_id is not None else self.tenant_id,
                backup_id if backup_id is not None else self.backup_id,
                where,
            )
        if not self.tenant_id:
            raise ArchiveError(f"{where}: manifest lacks tenant_id")
        if not is_backup_id(self.backup_id):
            raise ArchiveError(f"{where}: manifest lacks a valid backup_id (got {self.backup_id!r})")
        try:
            self.checksum()
        except ArchiveError as exc:
            raise ArchiveError(f"{where}: {exc}") from None
        if self.tables is None or self.table_kinds is None:
            raise ArchiveError(f"{where}: manifest lacks tables/table_kinds (not a tenant-backup manifest?)")
        return self

    # -- the seal (core/archive/seal.py, docs/MANIFEST.md) ----------------------------------------

    def with_seal(self, keyring) -> "Manifest":
        """A copy sealed with the master key that wraps the archive's data key (archive.key_id, which
        `keyring` must hold): what export, `keys rewrap` and `verify --seal` store."""
        new = copy.deepcopy(self)
        new.seal = SealInfo(**seal_manifest(new, keyring))
        new.nulls = new.nulls - {"seal"}
        return new

    def verify_seal(self, keyring, *, where: str = "manifest") -> bool:
        """Before any use: True when sealed and the seal verifies; False when the manifest has no seal
        (written before manifests were sealed: warn, and never trust it for restore --replace);
        ManifestNotAuthentic (an ArchiveError, exit code 6) when a sealed field was edited or the seal
        is not one this keyring can check."""
        return check_seal(self, keyring, where=where)

    @property
    def is_sealed(self) -> bool:
        return self.seal is not None

    # -- convenient views ----------------------------------------------------------------------

    @property
    def tenant_column(self) -> str:
        """The tenant column the export used (source.tenant_column), else "tenant_id"."""
        return (self.source.tenant_column if self.source else None) or DEFAULT_TENANT_COLUMN

    @property
    def server_version(self) -> str | None:
        """The source server's version (source.server_version)."""
        return self.source.server_version if self.source else None

    @property
    def total_rows(self) -> int:
        return sum((self.tables or {}).values())

    def drill_proved(self, sha256: str | None = None) -> bool:
        """Whether the restore drill recorded here passed on exactly this archive (its SHA-256, or
        `sha256` when given): what a location asset requires before it ships the archive."""
        want = sha256 or (self.archive.sha256 if self.archive else None)
        d = self.drill
        return bool(d and d.ok is True and want and isinstance(d.sha256, str) and d.sha256.lower() == want.lower())

    def sealed_document(self, fields: tuple[str, ...], archive_fields: tuple[str, ...]) -> dict[str, Any]:
        """`fields` (and archive's `archive_fields`) as the manifest holds them, null when absent:
        what the seal covers (core/archive/seal.py names the fields)."""
        raw = self.to_dict()
        archive = raw.get("archive") if isinstance(raw.get("archive"), dict) else {}
        doc: dict[str, Any] = {name: raw.get(name) for name in fields}
        doc["archive"] = {name: archive.get(name) for name in archive_fields}
        return doc

    @property
    def kinds(self) -> TableKinds:
        return self.table_kinds or TableKinds()

    @property
    def key_id(self) -> str | None:
        return self.archive.key_id if self.archive else None
