"""Alembic migrations of the greenprof store (run programmatically by ``greenprof.store.db``).

Revision ``0001`` is the first released schema. To add one, edit ``greenprof/store/schema.py``
then generate and review a revision against a database at the current head::

    from alembic import command
    from greenprof.store.migrate import alembic_config
    command.revision(alembic_config("sqlite:///dev.db"), message="...", rev_id="0002",
                     autogenerate=True)

and bump ``schema.SCHEMA_REVISION``. A migration must keep every row (tests/test_store.py seeds
each revision and upgrades it to head); on SQLite it runs with foreign keys off, in batch mode.
"""
