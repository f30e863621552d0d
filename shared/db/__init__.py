"""PostgreSQL access, one entry point: ``from shared.db import Database, open_database``.

:func:`open_database` opens the pool and builds the repositories over it (:class:`Database`); the
repositories call the SQL of ``shared/db/queries/*.sql`` (aiosql named statements) through the typed
methods of :class:`Queries`, generated into shared/db/statements.py by ``python -m shared.db.gen_statements``.
Beside them: the migrations (shared.db.migrate), the monthly partitions (shared.db.partitions), the rows
the repositories return (shared.db.models).

Modules inside this package import from its submodules (``shared.db.queryset``), never from
``shared.db`` itself, so that no import depends on the order of the lines below.
"""

from shared.db.database import Database, open_database
from shared.db.queryset import QUERIES_DIR, Queries, default_queries, load_queries

__all__ = ["QUERIES_DIR", "Database", "Queries", "default_queries", "load_queries", "open_database"]
