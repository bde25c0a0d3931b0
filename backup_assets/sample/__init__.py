"""The sample multi-tenant database (a jewellery-retail ERP under row-level security).

Used by the tests, the demo and the benchmarks: `schema.sql` is the schema, `generate.py` creates
and fills databases server-side. `python -m backup_assets.sample --help` for the command line.
"""

from .generate import (  # noqa: F401
    SampleDatabase,
    TenantInfo,
    add_large_tenant,
    add_tenants,
    canary_for,
    create_sample_database,
    populate_default,
    tenant_row_counts,
)
