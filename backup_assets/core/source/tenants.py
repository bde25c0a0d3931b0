"""Tenant discovery: the registry query, run without any tenant scope."""

from __future__ import annotations

import logging

import psycopg2

from ..errors import ConfigError, InvalidTenantId, UnknownTenant
from .session import connect
from ..settings import SourceSettings
from .tenant_ids import validate_tenant_id

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


def is_listed(settings: SourceSettings, tenant_id: str) -> bool:
    """Whether the registry query returns this tenant, without fetching the whole registry (the
    weekly run asks once per tenant: thousands of tenants must not mean millions of rows)."""
    query = settings.tenants_query.strip().rstrip(";")
    # The alias names the query's first column whatever it is called; UUIDs compare case-blind,
    # as validate_tenant_id canonicalizes them.
    compare = "registry.tenant_id::text = %s" if settings.tenant_id_pattern else "lower(registry.tenant_id::text) = %s"
    with connect(settings.registry_dsn, timeout=settings.connect_timeout) as conn:
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT EXISTS (SELECT 1 FROM ({query}) AS registry(tenant_id) WHERE {compare})",
                            (tenant_id,))
                return bool(cur.fetchone()[0])
        except psycopg2.Error as exc:
            reason = " ".join(str(exc).split())
            raise ConfigError(f"TENANT_BACKUP_TENANTS_QUERY failed: {reason}") from None


def require_known_tenant(settings: SourceSettings, tenant_id: str, *, force: bool = False) -> bool:
    """Refuse a tenant the registry does not return, unless forced. Returns whether it is listed."""
    listed = is_listed(settings, tenant_id)
    if not listed and not force:
        raise UnknownTenant(
            f"tenant {tenant_id} is not returned by TENANT_BACKUP_TENANTS_QUERY (unknown, or not active);"
            " use --force to back it up anyway"
        )
    return listed
