"""A fitted part of a model stored as one JSON file in the model directory (rerank.json, routing.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Self

from pydantic import BaseModel


class JsonArtifact(BaseModel):
    """Saved to and loaded from `model_dir / file_name`; absent in models trained before it existed."""

    file_name: ClassVar[str]

    def save(self, model_dir: Path) -> Path:
        path = Path(model_dir) / self.file_name
        path.write_text(self.model_dump_json(indent=1))
        return path

    @classmethod
    def load(cls, model_dir: Path) -> Self | None:
        """The stored artifact, or None when the model directory has none."""
        path = Path(model_dir) / cls.file_name
        return cls.model_validate(json.loads(path.read_text())) if path.exists() else None
