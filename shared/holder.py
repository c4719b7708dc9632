"""The Predictor of a long-running process (the inference service, a job worker), and when it changes.

One holder, two ways to use it:
- A server reads `current` once per request and calls `check()` at start and every `reload_interval_s`
  (`start_polling`): a newly promoted best model is loaded beside the old one and swapped in with one
  reference assignment, so requests in flight keep the Predictor they started with; a failed reload keeps
  the old model serving and is reported in `last_error`.
- A worker calls `best()` for a new job and `pinned(version)` for a resumed one (a job keeps the model it
  started with). These run between jobs, so the old model is dropped before the next one loads (one model in
  memory), and a failure raises: the job fails with the error.

The model directory is the configured `model_dir` when set, else the registry's best (or, for `pinned`, the
registry's directory of that version).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared import registry
from shared.predictor import Predictor

log = logging.getLogger(__name__)


def model_dir_version(model_dir: Path) -> str:
    """The version recorded in a model directory's model.json."""
    return str(json.loads((Path(model_dir) / "model.json").read_text()).get("version", "unknown"))


def serving_model_dir(settings: Any) -> Path | None:
    """An explicitly configured `model_dir` wins; otherwise the registry's best model (None: none yet)."""
    explicit = getattr(settings, "model_dir", None)
    if explicit:
        return Path(explicit)
    return registry.best_model_dir(settings)


class PredictorHolder:
    """The current Predictor of this process, swapped atomically when the model to serve changes.

    `settings`: any object with `PredictorConfig` fields (how to run the model), `model_dir` and the
    registry's `db_url` (which model). Callers take `holder.current` once per request/chunk and use that
    object throughout; the old Predictor is freed when the last user drops it.
    """

    def __init__(
        self,
        settings: Any,
        *,
        loader: Callable[[Path, Any], Predictor] = Predictor.load,
        locate: Callable[[Any], Path | None] = serving_model_dir,
    ):
        self.settings = settings
        self._loader = loader
        self._locate = locate
        self._current: Predictor | None = None
        self._current_dir: Path | None = None
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.listeners: list[Callable[[Predictor], None]] = []

    @property
    def current(self) -> Predictor | None:
        return self._current

    @property
    def ready(self) -> bool:
        return self._current is not None

    def set(self, predictor: Predictor, model_dir: Path | None = None) -> None:
        """Swap in a Predictor (a single reference assignment: atomic for readers)."""
        self._current, self._current_dir = predictor, model_dir or predictor.model_dir
        for listener in self.listeners:
            listener(predictor)

    def _holds(self, model_dir: Path) -> bool:
        """Whether the current Predictor is the one in `model_dir` (same directory, same version)."""
        if self._current is None or self._current_dir is None:
            return False
        same_dir = model_dir.resolve() == Path(self._current_dir).resolve()
        return same_dir and model_dir_version(model_dir) == self._current.version

    def _load(self, model_dir: Path) -> Predictor:
        """Load a model directory with these settings (tests wrap it to count what reaches the model)."""
        return self._loader(model_dir, self.settings)

    def _switch(self, model_dir: Path, *, release_first: bool) -> Predictor:
        """The Predictor of `model_dir`, loading it unless it is the current one."""
        if self._holds(model_dir):
            assert self._current is not None
            return self._current
        old = self._current.version if self._current else None
        if release_first:
            self._current = None  # free the old model before loading the next one
        predictor = self._load(model_dir)
        self.set(predictor, model_dir)
        log.info("model switched %s -> %s", old, predictor.version)
        return predictor

    # ------------------------------------------------------------------------------------------- server

    def check(self) -> bool:
        """Load the model to serve if it differs from the current one; True when a new model was swapped in.

        Errors (registry unreachable, a broken model dir) are logged and kept in `last_error`; the current
        model keeps serving.
        """
        with self._reload_lock:
            try:
                model_dir = self._locate(self.settings)
                if model_dir is None or self._holds(Path(model_dir)):
                    return False
                self._switch(Path(model_dir), release_first=False)
            except Exception as exc:  # keep serving the old model; report on /ready and in logs
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("model reload failed")
                return False
            self.last_error = None
            return True

    def start_polling(self, interval_s: float) -> None:
        """`check()` every `interval_s` seconds in a daemon thread (0 disables)."""
        if interval_s <= 0 or self._thread is not None:
            return

        def _loop() -> None:
            while not self._stop.wait(interval_s):
                self.check()

        self._thread = threading.Thread(target=_loop, name="predictor-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # ------------------------------------------------------------------------------------------- worker

    def best(self) -> Predictor:
        """The Predictor for a new job: the configured model_dir, else the registry's best."""
        with self._reload_lock:
            model_dir = self._locate(self.settings)
            if model_dir is None:
                raise RuntimeError("no model: the registry has no best model and ISCO_MODEL_DIR is not set")
            return self._switch(Path(model_dir), release_first=True)

    def pinned(self, version: str) -> Predictor | None:
        """The Predictor for `version` (a resumed job's), or None when that version is no longer available."""
        with self._reload_lock:
            if self._current is not None and self._current.version == version:
                return self._current
            explicit = getattr(self.settings, "model_dir", None)
            try:
                model_dir = Path(explicit) if explicit else registry.model_dir_for(self.settings, version)
            except registry.RegistryError:
                return None
            predictor = self._switch(model_dir, release_first=True)
            return predictor if predictor.version == version else None
