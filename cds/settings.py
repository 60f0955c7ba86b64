"""The one settings object: every knob of the service, read from `CDS_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RULES_DIR = REPO_ROOT / "rules"
DEV_HASH_KEY = "dev-only-patient-hash-key-change-me"


class Settings(BaseSettings):
    """Service configuration. Nothing else in the package reads `os.environ`."""

    model_config = SettingsConfigDict(env_prefix="CDS_", extra="ignore", frozen=True)

    rules_dir: Path = DEFAULT_RULES_DIR
    database_url: str = f"sqlite:///{REPO_ROOT / 'var' / 'cds.sqlite3'}"
    # Keyed hash for patient ids stored with issued cards (never the id in the clear).
    patient_hash_key: str = DEV_HASH_KEY
    trusted_issuers: Path | None = None
    dev: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    public_base_url: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    fhir_budget_seconds: float = Field(default=2.0, gt=0, le=30)
    jwt_leeway_seconds: int = Field(default=60, ge=0, le=600)
    log_level: str = "INFO"

    @field_validator("log_level")
    @classmethod
    def _upper_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("log_level must be DEBUG, INFO, WARNING or ERROR")
        return level

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if not self.dev:
            if self.patient_hash_key == DEV_HASH_KEY:
                raise ValueError("CDS_PATIENT_HASH_KEY must be set to a secret outside --dev")
            if self.trusted_issuers is None:
                raise ValueError("CDS_TRUSTED_ISSUERS must name the trusted-issuers file outside --dev")
        return self
