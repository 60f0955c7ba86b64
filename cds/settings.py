"""The one settings object: every knob of the service, read from `CDS_*` environment variables."""

from __future__ import annotations

from datetime import UTC, date, datetime
from ipaddress import ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cds import limits as defaults
from cds.limits import Limits

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RULES_DIR = REPO_ROOT / "rules"
DEV_HASH_KEY = "dev-only-patient-hash-key-change-me"
# The day the example patients in fixtures/ are written for (fixtures/manifest.json): `cds serve --dev`
# evaluates as of this day, so the demo shows the documented cards on any future date.
FIXTURES_DAY = date(2026, 6, 1)


class Settings(BaseSettings):
    """Service configuration. Nothing else in the package reads `os.environ`."""

    # Each field's docstring is its description: `cds settings` prints them as docs/settings.md.
    model_config = SettingsConfigDict(
        env_prefix="CDS_", extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    rules_dir: Path = DEFAULT_RULES_DIR
    """Directory of the rule pack (`pack.yaml` and the files it lists)."""
    database_url: str = f"sqlite:///{REPO_ROOT / 'var' / 'cds.sqlite3'}"
    """SQLAlchemy URL of the store: SQLite, or PostgreSQL as `postgresql+psycopg://user@host:5432/db`."""
    patient_hash_key: str = DEV_HASH_KEY
    """Secret key of the HMAC stored in place of patient ids (never the id in the clear); required outside --dev."""
    trusted_issuers: Path | None = None
    """File of trusted JWT issuers and their keys (see `deploy/trusted-issuers.yaml`); required outside --dev."""
    dev: bool = False
    """Development mode. For `cds serve` only the `--dev` flag sets it (this variable alone does not turn authentication off)."""
    host: str = "127.0.0.1"
    """Interface to bind (`cds serve --host`, `make run HOST=`); --dev binds 127.0.0.1 only."""
    port: int = Field(default=8000, ge=1, le=65535)
    """TCP port to listen on (`cds serve --port`, `make run PORT=`); a busy port stops start-up with a message."""
    workers: int = Field(default=1, ge=1, le=64)
    """uvicorn worker processes, 1 to 64 (`cds serve --workers`)."""
    public_base_url: str | None = None
    """The URL EHRs call (scheme, host, port, any path prefix), e.g. `https://cds.example.org`; a JWT's `aud` must be this plus the path. Required outside --dev; never taken from the Host or X-Forwarded-* headers."""
    trusted_proxies: tuple[str, ...] = ()
    """Proxies (IP addresses or networks, a JSON list) whose X-Forwarded-For/-Proto uvicorn believes; empty: none."""
    cors_origins: tuple[str, ...] = ()
    """Browser origins allowed by CORS, as a JSON list (`'["https://sandbox.cds-hooks.org"]'`); empty: CORS off."""
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    """Largest request body in bytes (at least 1024); a larger one is answered 413."""
    fhir_budget_seconds: float = Field(default=2.0, gt=0, le=30)
    """Seconds (up to 30) for fetching missing prefetch from the EHR's FHIR server, then 412 naming the key."""
    max_resources_per_key: int = Field(default=defaults.MAX_RESOURCES_PER_KEY, ge=1)
    """Most resources in one prefetch key (sent or fetched); more is a 413 naming the key (cds.limits)."""
    max_resources: int = Field(default=defaults.MAX_RESOURCES, ge=1)
    """Most resources in one request, all prefetch keys and draft orders together (or one Bundle); more is a 413."""
    max_answers_per_questionnaire: int = Field(default=defaults.MAX_ANSWERS_PER_QUESTIONNAIRE, ge=1)
    """Most items and answers, nested ones included, in one QuestionnaireResponse; more is a 413."""
    max_json_depth: int = Field(default=defaults.MAX_JSON_DEPTH, ge=8, le=512)
    """Deepest nesting of objects and arrays in any JSON body (8 to 512); deeper is a 400 naming the member."""
    max_fetch_bytes: int = Field(default=defaults.MAX_FETCH_BYTES, ge=1024)
    """Most bytes fetched from a client's fhirServer for one request, all keys and `next` pages together; more is a 413."""
    inline_max_resources: int = Field(default=defaults.INLINE_MAX_RESOURCES, ge=0)
    """Requests up to this many resources are evaluated on the event loop; larger ones in a thread, so the worker keeps answering."""
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    """Seconds a connection has to send its request headers before it is closed (cds.server)."""
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    """Seconds a request has to send its whole body, counted from its headers; then a 408 and the connection is closed."""
    jwt_leeway_seconds: int = Field(default=60, ge=0, le=600)
    """Clock skew in seconds (0 to 600) allowed on a JWT's `exp`, `nbf` and `iat`."""
    log_level: str = "INFO"
    """Log level: DEBUG, INFO, WARNING or ERROR."""
    demo_now: datetime | None = None
    """--dev only: evaluate every call as of this day (`YYYY-MM-DD`, end of that UTC day) instead of the machine clock; `cds serve --dev` sets the fixtures' day, 2026-06-01, and every answer carries a `CDS-Demo-Now` header."""

    @field_validator("demo_now", mode="before")
    @classmethod
    def _demo_day(cls, value: Any) -> Any:
        if value == "":
            return None  # `cds serve` exports an empty CDS_DEMO_NOW for "the machine clock"
        if isinstance(value, str) and len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, 23, 59, 59, 999999, tzinfo=UTC)
        return value

    @field_validator("demo_now")
    @classmethod
    def _demo_zone(cls, value: datetime | None) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    @property
    def limits(self) -> Limits:
        return Limits(
            resources_per_key=self.max_resources_per_key,
            resources=self.max_resources,
            answers_per_questionnaire=self.max_answers_per_questionnaire,
            json_depth=self.max_json_depth,
            fetch_bytes=self.max_fetch_bytes,
        )

    @field_validator("log_level")
    @classmethod
    def _upper_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("log_level must be DEBUG, INFO, WARNING or ERROR")
        return level

    @field_validator("public_base_url")
    @classmethod
    def _absolute_base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(
                "CDS_PUBLIC_BASE_URL must be an absolute http(s) URL without query or fragment, "
                "e.g. https://cds.example.org"
            )
        return value.strip().rstrip("/")

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            try:
                ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"CDS_TRUSTED_PROXIES: {entry!r} is not an IP address or network") from None
        return value

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if not self.dev:
            if self.patient_hash_key == DEV_HASH_KEY:
                raise ValueError("CDS_PATIENT_HASH_KEY must be set to a secret outside --dev")
            if self.trusted_issuers is None:
                raise ValueError("CDS_TRUSTED_ISSUERS must name the trusted-issuers file outside --dev")
            if self.public_base_url is None:
                raise ValueError(
                    "CDS_PUBLIC_BASE_URL must be set outside --dev (e.g. https://cds.example.org): JWT "
                    "audiences are checked against it, never against the request's Host header"
                )
            if self.demo_now is not None:
                raise ValueError("CDS_DEMO_NOW (a fixed evaluation clock) is for --dev only")
        return self


def settings_document() -> str:
    """docs/settings.md: every setting with its CDS_* variable, default and description (`cds settings`)."""
    lines = [
        "# Settings",
        "",
        "Generated from `cds/settings.py` by `cds settings` (`make docs`); tests/test_settings_docs.py fails",
        "when this file is out of date. Every setting is an environment variable; `<repo>` is the checkout.",
        "",
        "| variable | default | what it sets |",
        "|---|---|---|",
    ]
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        text = str(default).lower() if isinstance(default, bool) else str(default)
        shown = "(unset)" if default in (None, ()) else f"`{text.replace(str(REPO_ROOT), '<repo>')}`"
        description = (info.description or "").replace("|", "\\|")
        lines.append(f"| `CDS_{name.upper()}` | {shown} | {description} |")
    return "\n".join(lines) + "\n"
