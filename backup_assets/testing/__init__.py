"""Test doubles and local servers (embedded PostgreSQL, ...) for the tests and the demo.

Not production code: nothing under `backup_assets.core` may import from here.
"""
