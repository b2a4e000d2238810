"""Persistence: the core's SQLAlchemy models, the engine, migrations and the core's queries.

No SQL lives outside this package, except in each network's own store module
(``bridge/<network>/store.py``), which queries that network's tables.
"""
