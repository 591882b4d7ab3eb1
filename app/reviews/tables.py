"""The review queue's table, as a SQLAlchemy 2 model.

One row per reading that went to people: the image, the answer as the service gave it, where it
came from, its place in the queue (status and lease) and, once keyed, the reviewer's result.
The schema itself is created and changed only by the Alembic migrations in
``app/reviews/migrations/`` (a test checks the two agree).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, LargeBinary, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Status(StrEnum):
    """Where an item is in the queue."""

    PENDING = "pending"
    """Waiting for a reviewer (also an item whose lease expired: see ``lease_expires``)."""
    CLAIMED = "claimed"
    """Held by a reviewer until ``lease_expires``."""
    DONE = "done"
    """Keyed; ``verdict`` holds the result."""
    EXPIRED = "expired"
    """Never keyed before the retention period deleted its image."""


class Kind(StrEnum):
    """Why an item is in the queue."""

    FLAGGED = "flagged"
    """The service flagged the reading for review."""
    AUDIT = "audit"
    """An accepted (not flagged) reading, sampled to measure the error among accepted answers."""


class Verdict(StrEnum):
    """What the reviewer said."""

    DIGITS = "digits"
    """The image shows this digit string (``label``)."""
    UNREADABLE = "unreadable"
    """A digit string a person cannot read either."""
    NOT_DIGITS = "not_digits"
    """Not a digit string at all."""


class Base(DeclarativeBase):
    """The queue's declarative base (its metadata is what the migrations must match)."""


class ReviewItem(Base):
    """One reading queued for people."""

    __tablename__ = "review_items"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    endpoint: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    model_version: Mapped[int] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(128))
    client_ref: Mapped[str | None] = mapped_column(String(200))
    expected_length: Mapped[int | None] = mapped_column(Integer)
    image: Mapped[bytes | None] = mapped_column(LargeBinary)
    image_type: Mapped[str] = mapped_column(String(64))
    image_bytes: Mapped[int] = mapped_column(Integer)
    reading: Mapped[dict[str, Any]] = mapped_column(JSON)
    reading_digits: Mapped[str] = mapped_column(String(64))
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    verdict: Mapped[str | None] = mapped_column(String(16))
    label: Mapped[str | None] = mapped_column(String(64))
    reviewer: Mapped[str | None] = mapped_column(String(64))
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    correct: Mapped[bool | None] = mapped_column()

    __table_args__ = (
        # The claim's scan: the oldest waiting item of a kind.
        Index("ix_review_items_queue", "status", "kind", "created_at"),
        # Retention's scan, and the audit figures per version.
        Index("ix_review_items_created", "created_at"),
        Index("ix_review_items_audit", "kind", "status", "model_version"),
    )
