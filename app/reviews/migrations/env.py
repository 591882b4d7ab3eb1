"""Alembic's environment for the review queue: runs on the connection :func:`upgrade` hands it.

The service applies the migrations itself (``app.reviews.db.upgrade``, at start or with
``python -m app.reviews upgrade``); there is no ``alembic.ini``. A new revision is a new file in
``versions/`` written like the last one; ``tests/app/reviews/test_db.py`` checks that the
migrated schema matches ``app/reviews/tables.py``.
"""

from __future__ import annotations

from alembic import context

from app.reviews.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached when run by hand without the service
    raise RuntimeError("run the migrations with `python -m app.reviews upgrade`")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
