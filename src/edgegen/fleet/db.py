"""Control-plane persistence: the SQLAlchemy 2.0 ``Base``, engines, sessions and the core tables.

    Base                 DeclarativeBase every fleet table derives from (Fleet II adds its own)
    make_engine(url)     SQLite (WAL, foreign keys, busy timeout) or PostgreSQL (psycopg 3) by URL
    session_factory(e)   a ``sessionmaker`` bound to an engine
    default_db_url(dir)  ``sqlite:///<dir>/fleet.db``

Core tables: devices (+ device_labels), enroll_tokens, models, model_versions, blobs, root_versions,
device_events. The schema itself is created by Alembic (``edgegen.fleet.migrations``), never by
``Base.metadata.create_all`` outside tests. This module does not sign, verify or serve anything.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker
from sqlalchemy.pool import StaticPool

from edgegen.errors import DatabaseURLError


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Base of every control-plane table (Fleet I and Fleet II)."""


# ---- engines and sessions ----------------------------------------------------------------------


def default_db_url(data_dir: Path) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / 'fleet.db'}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``: ``sqlite:///path`` (or ``sqlite://`` in memory) or ``postgresql://...``."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy.exc.ArgumentError
        raise DatabaseURLError(f"not a database URL: {url!r}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        kw: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if parsed.database in (None, "", ":memory:"):
            kw["poolclass"] = StaticPool
        else:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, **kw)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if backend == "postgresql":
        if parsed.get_driver_name() in ("", "psycopg2") and "+" not in parsed.drivername:
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True)
    raise DatabaseURLError(f"unsupported database {backend!r}: use sqlite:///PATH or postgresql://...")


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(bind=engine, expire_on_commit=False)


# ---- enums ---------------------------------------------------------------------------------------


class EventKind(str, enum.Enum):
    """What a device (or the control plane about a device) reported."""

    ENROLLED = "enrolled"
    AUTH_REFUSED = "auth_refused"  # control plane refused a credential (unknown, revoked)
    REVOKED = "revoked"
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    INSTALLED = "installed"  # written to the inactive slot and verified
    HEALTH_FAILED = "health_failed"
    SWITCHED = "switched"  # the new slot is active
    UPDATE_REFUSED = "update_refused"  # a TrustError: signature, hash, rollback, freeze, size...
    ERROR = "error"  # anything else (network, disk)
    RECOVERED = "recovered"  # resumed or rolled back an interrupted update after restart


# ---- tables --------------------------------------------------------------------------------------


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    group: Mapped[str | None] = mapped_column("group_name", String(200), index=True)
    model_name: Mapped[str | None] = mapped_column(String(200))  # the model this device follows
    credential_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of the device secret
    enroll_token_id: Mapped[str | None] = mapped_column(ForeignKey("enroll_tokens.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_reason: Mapped[str | None] = mapped_column(Text)
    # last state the device reported
    active_version: Mapped[int | None] = mapped_column(Integer)
    active_sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str | None] = mapped_column(String(40))
    last_error: Mapped[str | None] = mapped_column(Text)
    # the device profile it reported (``plan.DeviceProfile`` JSON), for rollouts by profile and by fit
    profile: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    labels_rows: Mapped[list[DeviceLabel]] = relationship(
        back_populates="device", cascade="all, delete-orphan", lazy="selectin"
    )

    @property
    def labels(self) -> dict[str, str]:
        return {row.key: row.value for row in self.labels_rows}

    def set_labels(self, labels: dict[str, str]) -> None:
        self.labels_rows = [DeviceLabel(key=k, value=v) for k, v in sorted(labels.items())]

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class DeviceLabel(Base):
    __tablename__ = "device_labels"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(String(200), index=True)

    device: Mapped[Device] = relationship(back_populates="labels_rows")


class EnrollToken(Base):
    __tablename__ = "enroll_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    model_name: Mapped[str | None] = mapped_column(String(200))
    group: Mapped[str | None] = mapped_column("group_name", String(200))
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    note: Mapped[str] = mapped_column(Text, default="")


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", order_by="ModelVersion.version", lazy="selectin"
    )


class Blob(Base):
    """A content-addressed file under ``<data>/blobs/sha256/<hex>``; never modified once written."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ModelVersion(Base):
    """An immutable published version: its signed manifest, exactly as signed, plus indexed facts."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    size: Mapped[int] = mapped_column(BigInteger)
    architecture: Mapped[str] = mapped_column(String(100), default="")
    quantization: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    envelope: Mapped[str] = mapped_column(Text)  # canonical JSON {"signed":..., "signatures":[...]}

    model: Mapped[Model] = relationship(back_populates="versions")


class RootVersion(Base):
    """Every root metadata version ever published (devices walk the chain N -> N+1)."""

    __tablename__ = "root_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    envelope: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DeviceEvent(Base):
    """What happened to a device: its reports, and refusals the control plane made about it."""

    __tablename__ = "device_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str | None] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(40))  # an EventKind value
    ok: Mapped[bool] = mapped_column(Boolean, default=True)
    model_name: Mapped[str | None] = mapped_column(String(200))
    version: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)  # error class and message for failures
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


# ---- schema migrations ---------------------------------------------------------------------------

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def migrate(engine: Engine) -> None:
    """Bring the schema to every head (``alembic upgrade heads``: Fleet I and Fleet II branches)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")
