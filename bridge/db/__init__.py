"""Persistence: SQLAlchemy models, the engine, migrations and the queries the bridge runs.

No SQL lives outside this package.
"""
