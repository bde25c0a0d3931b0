"""Tenant discovery: the registry query, run without any tenant scope."""

from __future__ import annotations

import logging

import psycopg2

from .errors import ConfigError, UnknownTenant
from .pg import connect
from .settings import SourceSettings
from .tenant_ids import validate_tenant_id
from .errors import InvalidTenantId

log = logging.getLogger(__name__)


def list_tenants(settings: SourceSettings) -> list[str]:
    """Ids returned by TENANT_BACKUP_TENANTS_QUERY (first column), validated, sorted, unique.

    A malformed id in the registry is logged and skipped: it must never reach a path or a setting,
    and one bad row must not stop every other tenant's backup.
    """
    with connect(settings.registry_dsn, timeout=settings.connect_timeout) as conn:
        try:
            with conn.cursor() as cur:
                cur.execute(settings.tenants_query)
                rows = cur.fetchall()
        except psycopg2.Error as exc:
            reason = " ".join(str(exc).split())
            raise ConfigError(f"TENANT_BACKUP_TENANTS_QUERY failed: {reason}") from None
    ids = set()
    for row in rows:
        if not row or row[0] is None:
            continue
        try:
            ids.add(validate_tenant_id(str(row[0]), settings.tenant_id_pattern))
        except InvalidTenantId as exc:
            log.warning("registry returned an invalid tenant id, skipped: %s", exc)
    return sorted(ids)


def require_known_tenant(settings: SourceSettings, tenant_id: str, *, force: bool = False) -> bool:
    """Refuse a tenant the registry does not return, unless forced. Returns whether it is listed."""
    listed = tenant_id in list_tenants(settings)
    if not listed and not force:
        raise UnknownTenant(
            f"tenant {tenant_id} is not returned by TENANT_BACKUP_TENANTS_QUERY (unknown, or not active);"
            " use --force to back it up anyway"
        )
    return listed
