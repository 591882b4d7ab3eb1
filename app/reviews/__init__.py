"""The review queue: readings people should key, their results, and what those results measure.

SQLAlchemy over SQLite (the embedded default) or PostgreSQL (several replicas), with Alembic
migrations. Knows no HTTP and no TensorFlow; the routes in ``app/api/routes/reviews.py`` and
``python -m training export-reviews`` use it.
"""
