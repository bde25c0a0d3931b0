"""The index's objects, as bytes and names: events, their authentication, packs (docs/STORAGE.md,
"The index"). No I/O here; core/locations/index.py reads and writes them.

Authentication is the manifests' key hierarchy (core/archive/seal.py): a key derived by HKDF-SHA256
from a master key of the keyring, with its own info string, keys an HMAC-SHA256:

    index_key = HKDF-SHA256(IKM = master key K, salt = none, info = "tenant-backup index v1", L = 32)

Writers use the keyring's active key; readers accept any key of the keyring, named in the object.
What is MACed binds the location's scope (its name and storage prefix), so an entry copied from
another location or prefix does not verify there.

An *event* is one thing that happened to one backup in one location, with the writer's clock in
nanoseconds (`at`):
- "p" put (or its manifest replaced): created_at (µs since the epoch), size, sha256, key_id, whether
  its manifest carried a seal that verified, the restore drill's majors, the total rows;
- "v" verified: when, ok, deep, the sha256 the check compared against;
- "d" deleted (written before the delete, so the index never outlives a backup the tool deleted);
- "x" refused: a manifest that failed authentication when the index was rebuilt (packs only).
A *log entry* is one event as an object whose NAME holds all of it (listing alone reads it):
    index/log/<tenant>/<backup>/<kind>~<at>~<fields…>~<key id>~<mac: 16 bytes, base64url>
A *pack* holds the merged state of many backups: a header line (JSON: scope, generation, kind "all"
or "latest", part i of n, complete_as_of, payload SHA-256, key id, MAC over the rest) and a zlib'd JSON
payload of rows [tenant, backup, put, verified, deleted_at, refused].
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import zlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..codec.keyring import Keyring

INFO = b"tenant-backup index v1"
VERSION = 1
SEP = "~"
NAME_MAX = 240  # a local location's file name must stay under 255 bytes
PACK_MAGIC = b"TBIX1\n"
LOG_MAC_BYTES = 16

PUT, VERIFIED, DELETED, REFUSED = "p", "v", "d", "x"


class IndexFormatError(ValueError):
    """An index object that is not authentic or not well-formed: ignored (and reported), never trusted."""


def index_key(master_key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=INFO).derive(master_key)


_KEYS: dict[bytes, bytes] = {}


def _mac(keyring: Keyring, key_id: str, message: bytes) -> bytes:
    master = keyring.get(key_id).key
    derived = _KEYS.get(master)
    if derived is None:
        derived = _KEYS[master] = index_key(master)
    return hmac.new(derived, message, hashlib.sha256).digest()


def _canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    kind: str  # PUT | VERIFIED | DELETED | REFUSED
    tenant_id: str
    backup_id: str
    at: int  # writer's clock, ns since the epoch: the later event of a kind wins
    fields: tuple = ()  # PUT: PutInfo fields; VERIFIED: VerifiedInfo fields; REFUSED: (reason,)

    def message(self, scope: str) -> bytes:
        return _canonical([VERSION, scope, self.kind, self.tenant_id, self.backup_id, self.at, list(self.fields)])


@dataclass(frozen=True)
class PutInfo:
    created_us: int | None
    size: int | None
    sha256: str | None
    key_id: str | None
    sealed: bool
    drill: tuple | None  # (server_major, source_major, matches_source) or None
    rows: int | None

    def as_fields(self) -> tuple:
        return (
            self.created_us,
            self.size,
            self.sha256,
            self.key_id,
            self.sealed,
            list(self.drill) if self.drill else None,
            self.rows,
        )

    @classmethod
    def of(cls, fields) -> "PutInfo":
        c, size, sha, key, sealed, drill, rows = fields
        return cls(c, size, sha, key, bool(sealed), tuple(drill) if drill else None, rows)


@dataclass(frozen=True)
class VerifiedInfo:
    verified_at: int | None  # seconds since the epoch
    ok: bool | None
    deep: bool | None
    sha256: str | None

    def as_fields(self) -> tuple:
        return (self.verified_at, self.ok, self.deep, self.sha256)

    @classmethod
    def of(cls, fields) -> "VerifiedInfo":
        return cls(*fields)


def _enc(value) -> str:
    if value is None:
        return "n"
    if value is True:
        return "T"
    if value is False:
        return "F"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return ",".join(_enc(v) for v in value) or "-"
    return "s" + _b64(str(value).encode())


def _dec(text: str):
    if text == "n":
        return None
    if text == "T":
        return True
    if text == "F":
        return False
    if text.startswith("s"):
        return _unb64(text[1:]).decode()
    if "," in text or text == "-":
        return [_dec(v) for v in text.split(",")] if text != "-" else []
    return int(text)


def _hex_to_b64(sha: str | None):
    if isinstance(sha, str) and len(sha) == 64:
        try:
            return "h" + _b64(bytes.fromhex(sha))
        except ValueError:
            pass
    return _enc(sha)


def log_name(event: Event, scope: str, keyring: Keyring) -> str | None:
    """The object name (last path part) holding `event`, MACed with the active key; None when it
    would be too long for a file name (the caller stores the event in the object's body instead)."""
    key_id = keyring.active.id
    mac = _mac(keyring, key_id, event.message(scope))[:LOG_MAC_BYTES]
    parts = [event.kind, str(event.at)]
    for i, value in enumerate(event.fields):
        digest = (event.kind == PUT and i == 2) or (event.kind == VERIFIED and i == 3)
        parts.append(_hex_to_b64(value) if digest else _enc(value))
    parts += [key_id, _b64(mac)]
    name = SEP.join(parts)
    return name if len(name) <= NAME_MAX else None


def body_of(event: Event, scope: str, keyring: Keyring) -> tuple[str, bytes]:
    """A log entry too long for a name: (short name, body) with the full MAC in the body."""
    key_id = keyring.active.id
    mac = _mac(keyring, key_id, event.message(scope))
    body = _canonical(
        {"at": event.at, "fields": list(event.fields), "key": key_id, "kind": event.kind, "tag": _b64(mac)}
    )
    return f"{event.kind}{SEP}{event.at}{SEP}body{SEP}{hashlib.sha256(body).hexdigest()[:16]}", body


def parse_log_name(tenant_id: str, backup_id: str, name: str, scope: str, keyring: Keyring) -> Event:
    """The event a log entry's name holds, authenticated; IndexFormatError otherwise."""
    parts = name.split(SEP)
    try:
        kind, at = parts[0], int(parts[1])
        key_id, mac = parts[-2], _unb64(parts[-1])
        values = []
        for text in parts[2:-2]:
            values.append(_unb64(text[1:]).hex() if text.startswith("h") else _dec(text))
    except (ValueError, IndexError, UnicodeDecodeError):
        raise IndexFormatError(f"malformed index entry {name!r}") from None
    if kind not in (PUT, VERIFIED, DELETED):
        raise IndexFormatError(f"index entry of unknown kind {name!r}")
    event = Event(kind, tenant_id, backup_id, at, tuple(values))
    _check(keyring, key_id, event.message(scope), mac, name)
    try:
        if kind == PUT:
            PutInfo.of(event.fields)
        elif kind == VERIFIED:
            VerifiedInfo.of(event.fields)
    except (TypeError, ValueError):
        raise IndexFormatError(f"malformed index entry {name!r}") from None
    return event


def parse_log_body(tenant_id: str, backup_id: str, body: bytes, scope: str, keyring: Keyring) -> Event:
    try:
        doc = json.loads(body)
        event = Event(doc["kind"], tenant_id, backup_id, int(doc["at"]), tuple(doc["fields"]))
        key_id, mac = doc["key"], _unb64(doc["tag"])
    except (ValueError, KeyError, TypeError):
        raise IndexFormatError("malformed index entry body") from None
    _check(keyring, key_id, event.message(scope), mac, f"{tenant_id}/{backup_id} body")
    return event


def _check(keyring: Keyring, key_id: str, message: bytes, mac: bytes, where: str) -> None:
    if key_id not in keyring:
        raise IndexFormatError(f"index object {where} authenticated by key {key_id!r}, not in the keyring")
    want = _mac(keyring, key_id, message)[: len(mac)]
    if len(mac) < LOG_MAC_BYTES or not hmac.compare_digest(want, mac):
        raise IndexFormatError(f"index object {where} fails authentication")


# -------------------------------------------------------------------------------------------- packs


@dataclass(frozen=True)
class PackHeader:
    scope: str
    generation: str
    kind: str  # "all" | "latest"
    part: int
    parts: int
    complete_as_of: int | None  # ns: the listing a reconcile checked the index against (None: never)
    count: int


def encode_pack(header: PackHeader, rows: list, keyring: Keyring) -> bytes:
    payload = zlib.compress(_canonical(rows), 6)
    doc = {
        "complete_as_of": header.complete_as_of,
        "count": header.count,
        "generation": header.generation,
        "key": keyring.active.id,
        "kind": header.kind,
        "part": header.part,
        "parts": header.parts,
        "payload": hashlib.sha256(payload).hexdigest(),
        "scope": header.scope,
        "v": VERSION,
    }
    doc["tag"] = _b64(_mac(keyring, keyring.active.id, _canonical(doc)))
    return PACK_MAGIC + _canonical(doc) + b"\n" + payload


def decode_pack(data: bytes, scope: str, keyring: Keyring, where: str) -> tuple[PackHeader, list]:
    """(header, rows) of an authentic pack of this scope; IndexFormatError otherwise."""
    if not data.startswith(PACK_MAGIC):
        raise IndexFormatError(f"{where}: not an index pack")
    line, _, payload = data[len(PACK_MAGIC) :].partition(b"\n")
    try:
        doc = json.loads(line)
        mac = _unb64(doc.pop("tag"))
        key_id = doc["key"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise IndexFormatError(f"{where}: malformed index pack header") from None
    _check(keyring, key_id, _canonical(doc), mac, where)
    if doc.get("v") != VERSION or doc.get("scope") != scope:
        raise IndexFormatError(f"{where}: index pack of another version or location ({doc.get('scope')!r})")
    if hashlib.sha256(payload).hexdigest() != doc["payload"]:
        raise IndexFormatError(f"{where}: index pack payload does not match its header")
    try:
        rows = json.loads(zlib.decompress(payload))
    except (zlib.error, ValueError):
        raise IndexFormatError(f"{where}: index pack payload unreadable") from None
    header = PackHeader(
        scope, doc["generation"], doc["kind"], doc["part"], doc["parts"], doc["complete_as_of"], doc["count"]
    )
    if not isinstance(rows, list) or len(rows) != header.count:
        raise IndexFormatError(f"{where}: index pack holds {len(rows)} rows, its header says {header.count}")
    return header, rows
