"""tenant-backup: per-tenant, RLS-isolated, streamed and encrypted PostgreSQL backups."""
