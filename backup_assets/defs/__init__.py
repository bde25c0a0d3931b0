"""The Dagster layer: partitions, assets, IO managers, checks, schedule, sensors. Thin over core/."""
