"""Helpers shared by the test suites (loopback DNS server, conformance-suite loaders)."""
