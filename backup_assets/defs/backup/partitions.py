"""One partition per tenant; the registry sensor keeps the set in step with the tenant registry."""

from dagster import DynamicPartitionsDefinition

TENANTS = "tenants"
tenants_partitions = DynamicPartitionsDefinition(name=TENANTS)
