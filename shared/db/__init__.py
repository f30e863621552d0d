"""PostgreSQL access: the pool, the migrations, the partitions, the statements and the repositories.

All SQL lives in ``shared/db/queries/*.sql`` as aiosql named statements, each called through one typed
method of :class:`Queries` (generated into shared/db/statements.py by ``python -m shared.db.gen_statements``).

Modules inside this package import from its submodules (``shared.db.queryset``), never from
``shared.db`` itself, so that no import depends on the order of the lines below.
"""

from shared.db.queryset import QUERIES_DIR, Queries, default_queries, load_queries

__all__ = ["QUERIES_DIR", "Queries", "default_queries", "load_queries"]
