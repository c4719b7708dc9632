"""Typed settings shared by every service: one base object, every value from the environment (prefix ISCO_).

Each service subclasses `CommonSettings` with its own fields; tests build settings objects directly.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
DEV_SECRET = "dev-insecure-secret"


class CommonSettings(BaseSettings):
    """Values every service needs: where state lives and how to reach the DB and Redis."""

    model_config = SettingsConfigDict(env_prefix="ISCO_", env_file=".env", extra="ignore")

    env: Literal["dev", "test", "prod"] = Field(
        "dev", description="dev allows insecure defaults; prod refuses them"
    )
    data_dir: Path = Field(REPO_ROOT / "var", description="shared volume: models/, uploads/, results/")
    database_url: str = Field("", description="SQLAlchemy URL; empty = SQLite file in data_dir")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker and cache")
    secret_key: str = Field(DEV_SECRET, description="salt for API key hashes; must be set outside dev")
    log_level: str = "INFO"
    isco_structure_csv: Path = Field(
        REPO_ROOT.parent / "shared" / "data" / "isco08" / "isco08_structure_en.csv",
        description="ILO ISCO-08 structure with definitions (training corpus only; optional)",
    )

    @model_validator(mode="after")
    def _refuse_dev_secret_in_prod(self) -> CommonSettings:
        if self.env == "prod" and self.secret_key == DEV_SECRET:
            raise ValueError("ISCO_SECRET_KEY must be set when ISCO_ENV=prod")
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'isco.db').resolve()}"

    @cached_property
    def model_store(self) -> Path:
        return self.data_dir / "models"

    @cached_property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @cached_property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    def ensure_dirs(self) -> None:
        for d in (self.data_dir, self.model_store, self.uploads_dir, self.results_dir):
            d.mkdir(parents=True, exist_ok=True)
