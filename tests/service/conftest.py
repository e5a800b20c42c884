"""Real-service fixtures shared with the storage tests: a moto S3 server, a fresh PostgreSQL db."""

from storage.conftest import pg_database, s3  # noqa: F401  (fixtures, found by name)
