"""Tenant discovery: the registry query, run without any tenant scope.

The query's first column is the tenant id. An optional second column is a display name (shown
beside the id in tables, `status`, run tags); an optional third, a status. Only the first is
required: `SELECT id FROM my_tenants` works; whatever the query names its columns does not matter.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass

import psycopg2
from psycopg2 import sql

from ..errors import ConfigError, InvalidTenantId, UnknownTenant, one_line
from ..settings import SourceSettings
from .session import connect
from .tenant_ids import validate_tenant_id

log = logging.getLogger(__name__)


NAME_MAX = 60  # display names are cut here (a registry value is not ours to trust)


def clean_name(value) -> str | None:
    """A registry value fit for a terminal, a log line or a run tag: text without control or
    format characters (no ANSI escapes, no bidi overrides), whitespace collapsed, at most NAME_MAX
    characters; None when nothing is left."""
    if value is None:
        return None
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in str(value))
    text = one_line(text)
    if len(text) > NAME_MAX:
        text = text[: NAME_MAX - 1].rstrip() + "…"
    return text or None


def display_label(tenant_id: str, name: str | None) -> str:
    """`Acme Jewellers (3f14…)` when the registry gave a name, else the id itself."""
    if not name:
        return tenant_id
    return f"{name} ({tenant_id[:4]}…)" if len(tenant_id) > 5 else f"{name} ({tenant_id})"


@dataclass(frozen=True)
class TenantRecord:
    id: str
    name: str | None = None  # the query's second column, if any
    status: str | None = None  # the third, if any

    @property
    def label(self) -> str:
        return display_label(self.id, self.name)


def _records(rows, rule) -> list[TenantRecord]:
    found: dict[str, TenantRecord] = {}
    skipped: list[str] = []
    for row in rows:
        if not row or row[0] is None:
            continue
        try:
            tenant_id = validate_tenant_id(str(row[0]), rule)
        except InvalidTenantId as exc:
            skipped.append(str(exc))
            continue
        record = TenantRecord(
            tenant_id, clean_name(row[1]) if len(row) > 1 else None, clean_name(row[2]) if len(row) > 2 else None
        )
        if tenant_id not in found or (found[tenant_id].name is None and record.name is not None):
            found[tenant_id] = record
    if skipped:  # said once, with the count
        shown = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        log.warning("the registry returned %d invalid tenant ids, skipped: %s", len(skipped), shown)
    return [found[t] for t in sorted(found)]


def read_registry(settings: SourceSettings) -> list[TenantRecord]:
    """Every tenant TENANT_BACKUP_TENANTS_QUERY returns (validated, sorted by id, unique), with its
    display name and status when the query has those columns.

    A malformed id in the registry is logged and skipped: it must never reach a path or a setting,
    and one bad row must not stop every other tenant's backup.
    """
    with connect(settings.registry_dsn, timeout=settings.connect_timeout) as conn:
        try:
            with conn.cursor() as cur:
                cur.execute(query_body(settings.tenants_query))  # as written: no parameters, no `%` read
                rows = cur.fetchall()
        except psycopg2.Error as exc:
            raise ConfigError(f"TENANT_BACKUP_TENANTS_QUERY failed: {one_line(exc)}") from None
    return _records(rows, settings.tenant_ids)


def list_tenants(settings: SourceSettings) -> list[str]:
    """Ids returned by TENANT_BACKUP_TENANTS_QUERY (first column), validated, sorted, unique."""
    return [r.id for r in read_registry(settings)]


def tenant_names(settings: SourceSettings) -> dict[str, str]:
    """id -> display name, for the tenants the registry query names (an id-only query: empty)."""
    return {r.id: r.name for r in read_registry(settings) if r.name}


def query_body(query: str) -> str:
    """The operator's registry query as one SELECT that can be wrapped: comments and whitespace after
    its last token and one trailing `;` dropped; ConfigError if it holds more than one statement.

    Reads SQL as PostgreSQL does: '…' strings (with '' inside; E'…' with backslash escapes), "…"
    identifiers, $tag$…$tag$ bodies, `--` comments to the end of the line, nested /* */ comments;
    a `;` inside any of these is not a statement's end."""
    i, n = 0, len(query)
    end = 0  # just after the last character that is not a comment or whitespace
    cut = None  # where a `;` outside strings and comments was seen
    while i < n:
        ch = query[i]
        if ch in " \t\r\n\f":
            i += 1
            continue
        if query.startswith("--", i):
            newline = query.find("\n", i)
            i = n if newline < 0 else newline + 1
            continue
        if query.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if query.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif query.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            if depth:
                raise ConfigError("TENANT_BACKUP_TENANTS_QUERY: a /* comment is not closed")
            continue
        if cut is not None:
            raise ConfigError(
                "TENANT_BACKUP_TENANTS_QUERY holds more than one statement: give one SELECT (a trailing ; is fine)"
            )
        if ch == ";":
            cut = i
            i += 1
            continue
        if ch == "'":
            escapes = i > 0 and query[i - 1] in "eE" and (i < 2 or not (query[i - 2].isalnum() or query[i - 2] == "_"))
            i += 1
            while i < n:
                if escapes and query[i] == "\\":
                    i += 2
                elif query[i] == "'":
                    if query.startswith("''", i):
                        i += 2
                        continue
                    break
                else:
                    i += 1
            if i >= n:
                raise ConfigError("TENANT_BACKUP_TENANTS_QUERY: a quoted string is not closed")
        elif ch == '"':
            close = query.find('"', i + 1)
            while close >= 0 and query.startswith('""', close):
                close = query.find('"', close + 2)
            if close < 0:
                raise ConfigError('TENANT_BACKUP_TENANTS_QUERY: a "quoted" name is not closed')
            i = close
        elif ch == "$" and (match := _DOLLAR_TAG.match(query, i)) and not (i and _IDENT_CHAR.match(query[i - 1])):
            close = query.find(match.group(0), match.end())
            if close < 0:
                raise ConfigError(f"TENANT_BACKUP_TENANTS_QUERY: {match.group(0)} string is not closed")
            i = close + len(match.group(0)) - 1
        i += 1
        end = i
    body = query[:end]
    if not body.strip():
        raise ConfigError("TENANT_BACKUP_TENANTS_QUERY is empty")
    return body


_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_$\x80-\U0010ffff]")


def registry_row(settings: SourceSettings, tenant_id: str) -> tuple | None:
    """The registry query's row for this tenant (id[, name[, status]]), or None when it does not return
    it — without fetching the whole registry (the weekly run asks once per tenant: thousands of
    tenants must not mean millions of rows).

    The operator's SQL runs as written: it is wrapped as a sub-query and sent with no client-side
    parameters at all (psycopg2 only reads `%` as a placeholder when parameters are passed, so a
    `LIKE 'Silver%'` stays what it says); the tenant id goes in as a quoted literal (sql.Literal) in
    our own part of the statement, and the sub-query ends on a new line, so a `--` comment at its end
    cannot swallow what follows."""
    # The alias names the query's first column whatever it is called; UUIDs compare case-blind,
    # as validate_tenant_id canonicalizes them.
    column = sql.SQL("registry.tenant_id::text" if settings.tenant_id_pattern else "lower(registry.tenant_id::text)")
    statement = sql.SQL("SELECT * FROM ({query}\n) AS registry(tenant_id) WHERE {column} = {tenant} LIMIT 1").format(
        query=sql.SQL(query_body(settings.tenants_query)), column=column, tenant=sql.Literal(tenant_id)
    )
    with connect(settings.registry_dsn, timeout=settings.connect_timeout) as conn:
        try:
            with conn.cursor() as cur:
                cur.execute(statement)  # no parameters: nothing of the operator's text is interpolated
                return cur.fetchone()
        except psycopg2.Error as exc:
            raise ConfigError(f"TENANT_BACKUP_TENANTS_QUERY failed: {one_line(exc)}") from None


def tenant_name(settings: SourceSettings, tenant_id: str) -> str | None:
    """One tenant's display name (None when the query has no name column or does not return it)."""
    row = registry_row(settings, tenant_id)
    return clean_name(row[1]) if row is not None and len(row) > 1 else None


def is_listed(settings: SourceSettings, tenant_id: str) -> bool:
    """Whether the registry query returns this tenant."""
    return registry_row(settings, tenant_id) is not None


def require_known_tenant(settings: SourceSettings, tenant_id: str, *, force: bool = False) -> bool:
    """Refuse a tenant the registry does not return, unless forced. Returns whether it is listed."""
    listed = is_listed(settings, tenant_id)
    if not listed and not force:
        raise UnknownTenant(
            f"tenant {tenant_id} is not returned by TENANT_BACKUP_TENANTS_QUERY (unknown, or not active);"
            " use --force to back it up anyway"
        )
    return listed
