"""Tenant id validation: done before an id reaches SQL, a setting, a path or an object key.

The one place that decides what a tenant id is: `TenantIds` (UUIDs by default, or the whole-match
regular expression TENANT_BACKUP_TENANT_ID_PATTERN), compiled once when the settings are loaded (a
pattern that does not compile is a ConfigError then, not at the first tenant id). Settings holds one
(`settings.tenant_ids`), and hands it to the source settings and to every location.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from functools import lru_cache

from ..errors import ConfigError, InvalidTenantId

PATTERN_VAR = "TENANT_BACKUP_TENANT_ID_PATTERN"

# Whatever the configured pattern allows, these never pass: they could escape a path, an object
# key, a PGOPTIONS value or a SQL literal.
_FORBIDDEN = re.compile(r"[\s'\"\\/;,=`$]|\.\.|^-")


@dataclass(frozen=True)
class TenantIds:
    """What a tenant id is: a plain UUID (pattern None), or a whole match of `pattern`."""

    pattern: str | None = None
    _matcher: re.Pattern | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.pattern:
            try:
                object.__setattr__(self, "_matcher", re.compile(self.pattern))
            except re.error as exc:
                raise ConfigError(f"{PATTERN_VAR}={self.pattern!r} is not a valid regular expression: {exc}") from None

    def validate(self, raw: str) -> str:
        """The canonical form of a tenant id (a UUID lower-case and hyphenated), or InvalidTenantId."""
        if not isinstance(raw, str) or not raw or len(raw) > 128:
            raise InvalidTenantId(f"invalid tenant id {raw!r}: empty or too long")
        if _FORBIDDEN.search(raw):
            raise InvalidTenantId(f"invalid tenant id {raw!r}: contains forbidden characters")
        if self._matcher is not None:
            if not self._matcher.fullmatch(raw):
                raise InvalidTenantId(f"invalid tenant id {raw!r}: does not match {PATTERN_VAR}")
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


UUIDS = TenantIds()


@lru_cache(maxsize=32)
def tenant_ids(pattern: str | None) -> TenantIds:
    """The TenantIds of a pattern (None or "": UUIDs), compiled once per process."""
    return TenantIds(pattern or None)


def tenant_ids_from_env(env) -> TenantIds:
    """The one reader of TENANT_BACKUP_TENANT_ID_PATTERN: the TenantIds it configures."""
    return tenant_ids(env.get(PATTERN_VAR) or None)


def validate_tenant_id(raw: str, rule: "TenantIds | str | None" = None) -> str:
    """Return the canonical form of a tenant id or raise InvalidTenantId. `rule`: the configured
    TenantIds (settings.tenant_ids), or a pattern (compiled once), or None for UUIDs."""
    if not isinstance(rule, TenantIds):
        rule = tenant_ids(rule)
    return rule.validate(raw)
