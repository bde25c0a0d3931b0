"""Plain-Python core of tenant-backup. Nothing in this package imports Dagster."""
