"""Where fedhive keeps things: SQL metadata and content-addressed artifacts.

- ``database``: ``Database(url)`` (SQLite or PostgreSQL), migrations, units of work, ``atomic``.
- ``models``: the schema (SQLAlchemy ORM rows); ``migrations/``: its Alembic history.
- ``users_repo``, ``sessions_repo``, ``models_repo``: typed reads and writes over a session.
- ``artifacts``: the ``ArtifactStore`` protocol, the local store, ``artifact_store_from_url``;
  ``s3_artifacts``: the S3 store (the only module that imports boto3).
"""
