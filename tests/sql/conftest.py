"""Fixtures several SQL test files share."""

from tests.sql.test_tenancy import acme, app, two_tenants

__all__ = ["acme", "app", "two_tenants"]
