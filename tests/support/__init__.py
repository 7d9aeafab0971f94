"""Support code for the tests (writers and builders of foreign model files), imported as
`support.*` (tests/conftest.py puts tests/ on sys.path)."""
