"""Alembic environment: render migrations to SQL (offline mode) for ``shared.db.migrate`` to run.

Why offline: the only PostgreSQL driver installed is asyncpg, and SQLAlchemy 2.1's asyncio support
needs ``greenlet``, which is not a dependency of this project. Alembic still owns the revision graph,
the ``alembic_version`` table and the SQL; ``shared.db.migrate`` sends that SQL through asyncpg in one
transaction under an advisory lock. The same script can be reviewed with ``alembic upgrade --sql``.
"""

from __future__ import annotations

from alembic import context

if not context.is_offline_mode():
    raise RuntimeError(
        "rmbg migrations run through shared.db.migrate.upgrade() (or `rmbg migrate`); "
        "the alembic CLI here only renders SQL: add --sql"
    )

context.configure(
    dialect_name="postgresql",
    literal_binds=True,
    # Named paramstyle keeps a literal '%' in raw SQL as is (the default pyformat would double it).
    dialect_opts={"paramstyle": "named"},
    # One transaction for the whole upgrade: a failure leaves the schema and alembic_version untouched.
    transactional_ddl=True,
    transaction_per_migration=False,
)

with context.begin_transaction():
    context.run_migrations()
