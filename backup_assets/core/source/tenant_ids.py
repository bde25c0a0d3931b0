"""Tenant id validation: done before an id reaches SQL, a setting, a path or an object key."""

from __future__ import annotations

import re
import uuid

from ..errors import ConfigError, InvalidTenantId

# Whatever the configured pattern allows, these never pass: they could escape a path, an object
# key, a PGOPTIONS value or a SQL literal.
_FORBIDDEN = re.compile(r"[\s'\"\\/;,=`$]|\.\.|^-")


def validate_tenant_id(raw: str, pattern: str | None = None) -> str:
    """Return the canonical form of a tenant id or raise InvalidTenantId.

    Default: a UUID, returned lower-case and hyphenated. TENANT_BACKUP_TENANT_ID_PATTERN (a regular
    expression matched against the whole id) admits other id schemes, e.g. `[0-9]+`.
    """
    if not isinstance(raw, str) or not raw or len(raw) > 128:
        raise InvalidTenantId(f"invalid tenant id {raw!r}: empty or too long")
    if _FORBIDDEN.search(raw):
        raise InvalidTenantId(f"invalid tenant id {raw!r}: contains forbidden characters")
    if pattern:
        try:
            matcher = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"TENANT_BACKUP_TENANT_ID_PATTERN is not a valid regex: {exc}") from exc
        if not matcher.fullmatch(raw):
            raise InvalidTenantId(f"invalid tenant id {raw!r}: does not match TENANT_BACKUP_TENANT_ID_PATTERN")
        return raw
    try:
        parsed = uuid.UUID(raw)
    except ValueError:
        raise InvalidTenantId(f"invalid tenant id {raw!r}: not a UUID") from None
    canonical = str(parsed)
    if raw.lower().replace("-", "") != canonical.replace("-", "") or len(raw) not in (32, 36):
        # uuid.UUID also accepts braces and urn: prefixes; we want the plain form only.
        raise InvalidTenantId(f"invalid tenant id {raw!r}: not a plain UUID")
    return canonical
