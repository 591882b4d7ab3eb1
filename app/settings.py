"""All service configuration, read once from the environment (prefix ``DIGITS_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.reading.review import DEFAULT_REVIEW_THRESHOLD
from app.reviews.db import default_url
from app.serving.policy import Gate, VersionPolicy, parse_labels, parse_versions


class Settings(BaseSettings):
    """Service settings. Every field can be set as ``DIGITS_<FIELD_NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="DIGITS_", env_file=None, extra="ignore")

    models_dir: Path = Field(
        default=Path("models/mnist"),
        description="Directory holding integer-numbered SavedModel versions (TF Serving layout).",
    )
    max_upload_bytes: int = Field(
        default=5 * 1024 * 1024, gt=0, description="Largest request body accepted, in bytes."
    )
    max_image_pixels: int = Field(
        default=25_000_000,
        gt=0,
        description="Largest image accepted, width × height, checked before pixels are decoded.",
    )
    max_batch_size: int = Field(
        default=256, gt=0, description="Most files accepted by one /predict/batch request."
    )
    max_request_pixels: int = Field(
        default=50_000_000,
        gt=0,
        description="Most pixels (width × height, summed over a batch's images) one request may "
        "decode, checked from the images' headers before any is decoded.",
    )
    max_jpeg_scans: int = Field(
        default=32,
        gt=0,
        description="Most scans a JPEG may hold (a progressive JPEG is decoded once per scan), "
        "counted in the bytes before decoding.",
    )
    request_deadline_seconds: float = Field(
        default=10.0,
        gt=0.0,
        description="Longest a request's image work may run; past it the work stops and the "
        "client gets 503 deadline_exceeded.",
    )
    model_poll_seconds: float = Field(
        default=2.0,
        ge=0.0,
        description="How often to look for a new model version and a changed models.config; "
        "0 disables polling. On by default, as in TensorFlow Serving (which polls every 1 s): "
        "a version written by training is served without a restart. 2 s rather than 1 s: a "
        "poll lists the models directory and stats a few files (reading one only when it "
        "changed), cheap at either interval, and 2 s halves that work on slow network volumes "
        "while a new version still waits at most 2 s before it is loaded.",
    )
    version_policy: Literal["latest", "specific"] = Field(
        default="latest",
        description="Which versions are served: 'latest' (the newest that passes the promotion "
        "gate) or 'specific' (the versions in DIGITS_VERSIONS, the highest by default).",
    )
    versions: str = Field(
        default="",
        description="Versions served under the 'specific' policy, comma-separated, e.g. '1,3'.",
    )
    version_labels: str = Field(
        default="",
        description="Labels naming versions, e.g. 'stable=1,canary=2'; labelled versions are "
        "loaded too, and a request may name one with ?label=.",
    )
    version_config: Path | None = Field(
        default=None,
        description="A TensorFlow Serving models.config (text format) whose model_version_policy "
        "and version_labels replace the three settings above; re-read whenever it changes.",
    )
    default_label: str | None = Field(
        default=None,
        description="When set, requests naming no version get this label's version.",
    )
    promotion_tolerance: float = Field(
        default=0.005,
        ge=0.0,
        le=1.0,
        description="A newer version is held when its metrics.json test accuracy is more than "
        "this below the served version's.",
    )
    promotion_min_accuracy: float = Field(
        default=0.9,
        ge=0.0,
        le=1.0,
        description="A newer version is held when its metrics.json test accuracy is below this.",
    )
    probe_min_accuracy: float = Field(
        default=0.75,
        ge=0.0,
        le=1.0,
        description="Share of the built-in probe digits a version must read correctly to be "
        "served at all.",
    )
    intra_op_threads: int = Field(
        default=1, ge=0, description="TensorFlow intra-op threads (0 lets TensorFlow choose)."
    )
    inter_op_threads: int = Field(
        default=1, ge=0, description="TensorFlow inter-op threads (0 lets TensorFlow choose)."
    )
    max_batch_delay_ms: float = Field(
        default=0.0,
        ge=0.0,
        description="How long the inference worker may wait to gather more concurrent requests.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="When set, the prediction endpoints and /model require the header X-API-Key.",
    )
    grpc_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the Open Inference Protocol's gRPC service; 0 turns it off.",
    )
    grpc_host: str = Field(
        default="127.0.0.1",
        description="Address the gRPC service listens on (0.0.0.0 in a container).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    max_digits: int = Field(
        default=12, gt=0, description="Most digits /recognize reads from one image."
    )
    review_threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="A digit read with lower confidence than this flags the answer for review. "
        "Unset: the served version's own calibrated threshold (its reader.json), else "
        f"{DEFAULT_REVIEW_THRESHOLD}.",
    )

    # The review queue (app/reviews/): flagged readings stored for people to key.
    data_dir: Path = Field(
        default=Path("data"),
        description="Directory for the service's own state: the review queue's SQLite file "
        "when DIGITS_REVIEW_DATABASE_URL is unset.",
    )
    review_queue: bool = Field(
        default=True,
        description="Store readings for review at all; false opens no database and answers "
        "every reading with queue null.",
    )
    review_database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the review queue's database, e.g. "
        "postgresql+psycopg://user:password@host:5432/digits for several replicas. Unset: "
        "SQLite in DIGITS_DATA_DIR (reviews.sqlite3).",
    )
    review_queue_recognize: bool = Field(
        default=True, description="Queue /recognize readings that are flagged for review."
    )
    review_queue_predict: bool = Field(
        default=False,
        description="Queue /predict readings that are flagged for review (a request may also "
        "ask with ?queue=true).",
    )
    review_audit_share: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description="Share of the readings NOT flagged that are queued too, as audit samples: "
        "keyed, they measure how often an accepted answer is wrong.",
    )
    review_retention_days: float = Field(
        default=30.0,
        gt=0.0,
        description="Images stored for review are deleted after this many days; an item not "
        "keyed by then expires.",
    )
    review_max_items: int = Field(
        default=100_000,
        gt=0,
        description="Most queued items holding an image; past it new readings are answered "
        "with queue 'not_queued' until items are keyed, deleted or expire.",
    )
    review_lease_seconds: float = Field(
        default=300.0,
        gt=0.0,
        description="How long a claimed item is held for its reviewer before it returns to "
        "the queue.",
    )
    review_migrate: bool = Field(
        default=True,
        description="Apply the review queue's database migrations at start (else run "
        "`python -m app.reviews upgrade` before starting).",
    )
    review_retry_seconds: float = Field(
        default=30.0,
        gt=0.0,
        description="How often the review queue's database is tried again while it is not "
        "available: at start, and after a failure (a database dropped, recreated empty or "
        "unreachable) until it answers with its tables again.",
    )
    reviewer_api_key: SecretStr | None = Field(
        default=None,
        description="The reviewers' key, sent in the X-API-Key header: required by the /reviews "
        "endpoints and the /review page whenever any key is configured.",
    )

    # Connections: applied by the launcher (``python -m app.serve``), where uvicorn faces clients.
    max_connections: int = Field(
        default=256,
        gt=0,
        description="Most client connections open at once; one more is answered 503 and closed.",
    )
    keep_alive_seconds: int = Field(
        default=5, gt=0, description="An idle keep-alive connection is closed after this long."
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0.0,
        description="Time a client has to send a complete request head (line and headers), from "
        "connecting or from the first byte of its next request; then 408 and closed.",
    )
    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        description="Largest request head (request line and headers); 431 and closed above it.",
    )
    # The gRPC port's connections (DIGITS_GRPC_PORT): its own limits, applied by grpc's core.
    grpc_max_connections: int = Field(
        default=256,
        gt=0,
        description="Most connections open at once on the gRPC port; one more is closed as it "
        "is accepted.",
    )
    grpc_handshake_timeout_seconds: float = Field(
        default=10.0,
        gt=0.0,
        description="Time a new gRPC connection has to open its HTTP/2 session (preface and "
        "settings); then it is closed.",
    )
    grpc_max_connection_idle_seconds: float = Field(
        default=30.0,
        gt=0.0,
        description="A gRPC connection with no call in progress for this long is closed (GOAWAY, "
        "then the socket); clients reconnect on their next call.",
    )
    grpc_max_connection_age_seconds: float = Field(
        default=600.0,
        gt=0.0,
        description="A gRPC connection is asked to close (GOAWAY) after this long, however busy, "
        "so clients spread over workers and replicas again.",
    )
    grpc_max_connection_age_grace_seconds: float = Field(
        default=30.0,
        ge=0.0,
        description="How long calls in progress may finish on a connection past its age; then it "
        "is closed.",
    )
    grpc_max_concurrent_streams: int = Field(
        default=32,
        gt=0,
        description="Most calls in progress on one gRPC connection; a client queues the others.",
    )
    grpc_max_concurrent_rpcs: int = Field(
        default=256,
        gt=0,
        description="Most gRPC calls in progress at once over all connections; one more is "
        "answered RESOURCE_EXHAUSTED.",
    )
    grpc_keepalive_seconds: float = Field(
        default=60.0,
        gt=0.0,
        description="The gRPC server pings a connection with a call in progress after this long "
        "without traffic, and closes it when the ping is not answered within 20 s.",
    )
    graceful_shutdown_seconds: int = Field(
        default=20,
        gt=0,
        description="On SIGTERM, how long requests in flight may finish before they are cancelled.",
    )

    @field_validator("review_database_url", "reviewer_api_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Compose and Kubernetes may pass a variable that is set but empty: that means unset.
        return None if value == "" else value

    @field_validator("versions")
    @classmethod
    def _check_versions(cls, value: str) -> str:
        parse_versions(value)
        return value

    @field_validator("version_labels")
    @classmethod
    def _check_labels(cls, value: str) -> str:
        parse_labels(value)
        return value

    @model_validator(mode="after")
    def _check_policy(self) -> Settings:
        self.policy()
        return self

    def review_database(self) -> str:
        """The review queue's database URL: the setting, else SQLite in the data directory."""
        if self.review_database_url is not None:
            return self.review_database_url.get_secret_value()
        return default_url(self.data_dir)

    def policy(self) -> VersionPolicy:
        """The version policy and promotion gate these settings describe.

        Raises:
            ValueError: when the settings contradict each other (e.g. 'specific' with no
                versions), with a message naming the setting.
        """
        return VersionPolicy(
            kind=self.version_policy,
            versions=parse_versions(self.versions),
            labels=parse_labels(self.version_labels),
            default_label=self.default_label or None,
            gate=Gate(tolerance=self.promotion_tolerance, min_accuracy=self.promotion_min_accuracy),
        )


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests override this dependency or pass Settings explicitly."""
    return Settings()
