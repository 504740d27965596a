"""Settings: one pydantic-settings object, a section per capability, ``EDGEGEN_`` prefix.

Each default lives here once; CLI flags default to ``None`` and fall back to these values.
Nested sections read from ``EDGEGEN_<SECTION>__<FIELD>`` (e.g. ``EDGEGEN_ENGINE__N_CTX=4096``).
This module does not create directories or touch the network.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".cache" / "edgegen"


class EngineSettings(BaseModel):
    n_ctx: int = 2048
    n_threads: int | None = None  # None: physical cores
    n_batch: int = 512
    use_mmap: bool = True


class EvalSettings(BaseModel):
    chunk_tokens: int = 512
    max_chunks: int = 16


class ServeSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8080
    max_queue: int = 8
    ttft_deadline_s: float | None = None
    upstream_timeout_s: float = 60.0
    api_keys: list[str] = []  # empty: no key required (EDGEGEN_SERVE__API_KEYS='["k1","k2"]')
    upstream_url: str | None = None  # OpenAI-style base URL, e.g. https://api.example.com/v1
    upstream_key: str | None = None
    lookup_decoding: bool = False
    cors_origins: list[str] = []  # browser origins allowed to call the API ("*" for any)
    # confidence cascade to the upstream (both routes): off unless a threshold is set
    cascade_min_logprob: float | None = None
    cascade_max_entropy: float | None = None
    cascade_tokens: int = 8


class FleetSettings(BaseModel):
    db_url: str | None = None  # None: sqlite file under the data directory
    poll_interval_s: float = 10.0
    max_download_bytes: int = 8 * 1024**3
    # Fleet I: control plane data dir (None: <home>/fleet), admin token (None: <data>/admin_token),
    # publisher keyring (None: <data>/keys), manifest lifetime, device health-check latency bound
    data_dir: Path | None = None
    admin_token: str | None = None
    server_url: str = "https://127.0.0.1:8700"
    keys_dir: Path | None = None
    manifest_expires_days: float = 90.0
    health_max_latency_s: float = 60.0
    # Fleet II: rollouts evaluated every ..., device telemetry spool bound and upload period
    rollout_interval_s: float = 5.0
    telemetry_spool_bytes: int = 16 * 1024**2
    telemetry_upload_interval_s: float = 10.0
    # Fleet III: lifetime of a signed desired-state statement (freshness), telemetry retention
    desired_ttl_s: float = 300.0
    telemetry_max_age_days: float = 30.0
    telemetry_max_events_per_device: int = 200_000


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEGEN_", env_nested_delimiter="__", extra="ignore")

    home: Path = Field(default_factory=_default_home)
    engine: EngineSettings = EngineSettings()
    eval: EvalSettings = EvalSettings()
    serve: ServeSettings = ServeSettings()
    fleet: FleetSettings = FleetSettings()

    @property
    def models_dir(self) -> Path:
        return self.home / "models"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
