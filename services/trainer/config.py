"""Trainer settings: one typed object from defaults < profile YAML < environment < explicit arguments.

    settings = TrainerSettings(profile="quick")         # services/trainer/profiles/quick.yaml
    settings = TrainerSettings(profile="/path/x.yaml")  # any YAML file
    ISCO_PROFILE=quick ISCO_FINETUNE__EPOCHS=1 isco train

A profile YAML holds trainer fields at the top level (`preprocess:`, `replay_size:`, ...) and the model recipe
under `finetune:` (fields of `FinetuneConfig`). Top-level keys that are not trainer fields are taken as
finetune fields too, so a flat recipe file also works. Nested values come from the
environment with `__`: `ISCO_PREPROCESS__TEST_FRACTION=0.05`, `ISCO_FINETUNE__EPOCHS=1`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from services.trainer.outliers import OutlierConfig
from services.trainer.records import CORRECTION_SOURCE
from shared.corpus import MULTILINGUAL_EVAL_SOURCE
from shared.corpus_multilingual import check_languages
from shared.language import DEFAULT_MODEL_LANGUAGES, LANGUAGES
from shared.model.resources import default_base_model
from shared.settings import REPO_ROOT, CommonSettings

PROFILES_DIR = Path(__file__).parent / "profiles"
PROFILES = ("quick", "full")
DEFAULT_PROFILE = "full"
DEVSETS_DIR = REPO_ROOT.parent / "shared" / "data" / "devsets"


class PreprocessConfig(BaseModel):
    """How coded records become training data."""

    val_fraction: float = Field(0.1, ge=0, lt=0.5)
    test_fraction: float = Field(0.1, ge=0, lt=0.5)
    min_group_size_to_split: int = Field(3, ge=1, description="smaller unit groups go wholly to train")
    group_by: Literal["occupation", "record"] = Field(
        "occupation", description="keep an occupation's (or a title's) records in one split, or split records"
    )
    val_known_titles: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="share of the training records moved to validation as ESCO titles alone (their records "
        "with duties dropped): new titles of occupations the model knows, which users send as often as new "
        "occupations",
    )
    seed: int = 13
    resolve_conflicts: bool = Field(True, description="keep one code per text (see module docstring)")
    # the official unit-group title and definition describe the label itself: every model learns them
    train_only_sources: list[str] = Field(
        default_factory=lambda: [CORRECTION_SOURCE, "isco_title", "isco_definition"]
    )
    # records only validation and test keep: those of a training occupation are dropped by the split
    eval_only_sources: list[str] = Field(default_factory=lambda: [MULTILINGUAL_EVAL_SOURCE])
    outliers: OutlierConfig = Field(default_factory=OutlierConfig)


class ProfileError(ValueError):
    """A profile that does not exist or cannot be read."""


def profile_path(profile: str) -> Path:
    """The YAML file of a named profile (quick, full) or a path to a YAML file."""
    candidate = Path(profile)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ProfileError(f"profile file {candidate} not found")
        return candidate
    path = PROFILES_DIR / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")) or list(PROFILES)
        raise ProfileError(
            f"unknown profile {profile!r}: choose one of {', '.join(known)} or give a .yaml path"
        )
    return path


def load_profile(profile: str, trainer_fields: set[str]) -> dict[str, Any]:
    """Profile YAML as settings values: trainer fields as they are, everything else under `finetune`."""
    path = profile_path(profile)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ProfileError(f"profile {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ProfileError(f"profile {path}: expected a mapping at the top level")
    values: dict[str, Any] = {}
    finetune: dict[str, Any] = dict(data.pop("finetune", None) or {})
    for key, value in data.items():
        if key in trainer_fields:
            values[key] = value
        else:
            finetune[key] = value
    values["finetune"] = finetune
    return values


class FinetuneConfig(BaseModel):
    """Hyper-parameters of one fine-tuning run (profiles in services/trainer/profiles/*.yaml set these)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt profile key must fail, not be ignored

    base_model: str = Field(default_factory=default_base_model, description="HF id or local directory")
    max_length: int = 128
    epochs: float = 3.0
    learning_rate: float = 5e-5
    head_learning_rate: float = 2e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    label_smoothing: float = 0.0
    scale: float = 30.0
    batch_size: int | None = Field(
        None, description="per-device batch; None = chosen from data size and device"
    )
    gradient_accumulation: int | None = Field(None, description="None = chosen to reach the effective batch")
    effective_batch_size: int | None = Field(None, description="None = from data size")
    gradient_checkpointing: bool = False
    cpu_bf16: bool | None = Field(
        False,
        description="train in bf16 autocast on CPU (None = where the CPU has native bf16); GPUs always mix",
    )
    early_stopping_patience: int = 2
    prototype_init: bool = True
    prototype_max_per_class: int = 40
    head_epochs: int = Field(
        5,
        ge=0,
        description="stage 1: train the head on frozen embeddings of all training texts (0 = prototypes)",
    )
    head_stage_lr: float = 5e-3
    max_train_seconds: float | None = Field(
        None, description="time budget of the training loop: the LR schedule is shortened to fit, best kept"
    )
    freeze_word_embeddings: bool = Field(
        True,
        description="keep the 30k x 384 token embeddings fixed: half the parameters, small accuracy cost",
    )
    freeze_layers: int = Field(0, ge=0, description="keep the lowest N layers fixed (faster steps)")
    knn: bool = True
    knn_k: int = 10
    knn_max_index: int = 60000
    knn_weight: float | None = Field(
        None,
        ge=0,
        le=1,
        description="fixed kNN mixing weight (chosen on held-out occupations); None = fit on val",
    )
    knn_tau: float = 0.05
    lexical: bool = Field(True, description="store a character n-gram TF-IDF kNN signal with the model")
    lexical_k: int = 10
    lexical_tau: float = 0.05
    lexical_max_df: float = Field(
        0.01, gt=0, le=1, description="drop n-grams in more than this share of training texts (cost)"
    )
    lexical_weight: float | None = Field(
        None, ge=0, le=0.9, description="fixed lexical mixing weight; None = fit on val"
    )
    seed: int = 42
    index_validation: bool = Field(
        True,
        description="after weights, temperature and routing are chosen on validation, add its records to the "
        "kNN and lexical indexes (the held-out occupations would otherwise be missing from the model)",
    )
    rerank: bool = Field(
        False,
        description="second stage: rerank the top candidates with a learned fusion of the signals and the "
        "hierarchy, fitted on validation (shared.model.rerank)",
    )
    rerank_k: int = Field(20, ge=2, description="candidates the reranker rescores")
    duties_weight: float | None = Field(
        None,
        ge=0,
        le=0.5,
        description="weight of a record's duties view (its duties tokens pooled apart) beside the whole "
        "record (shared.model.scorer fuse_views); None = the best on validation's records with duties, "
        "0 = off",
    )
    routing_precision: float = Field(
        0.95, gt=0, lt=1, description="target precision of the auto-coding thresholds (routing.json)"
    )
    routing_bound_z: float = Field(
        1.28,
        ge=0,
        description="thresholds hold `routing_precision` on the precision's Wilson lower bound this many "
        "standard errors down (1.28: one-sided 90%), not on the point estimate: a record shape's threshold "
        "rests on a few hundred validation records, and held-out test records fell 3-5 points short of a "
        "point-estimate threshold (bench/experiments/RESULTS-issue27.md)",
    )
    device: str = "auto"
    disable_tqdm: bool = False
    # The hook for multilingual training: the corpus (or the pipeline, from the languages it trained on) sets
    # it; `save_stage` writes it to model.json "languages" (shared/model/directory.py), and serving sends
    # records in any other language or script to a coder (shared/screening.py `read_language`).
    languages: list[Literal[LANGUAGES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(DEFAULT_MODEL_LANGUAGES),
        description="ISO 639-1 codes of the languages the model is trained on (model.json `languages`)",
    )


class _ProfileSource(PydanticBaseSettingsSource):
    """Settings values from the profile YAML named by the `profile` argument or ISCO_PROFILE."""

    def __init__(
        self, settings_cls: type[BaseSettings], init_kwargs: dict[str, Any], env_profile: str | None
    ):
        super().__init__(settings_cls)
        self.profile = init_kwargs.get("profile") or env_profile or DEFAULT_PROFILE

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self.profile == DEFAULT_PROFILE and not (PROFILES_DIR / f"{DEFAULT_PROFILE}.yaml").is_file():
            return {"profile": self.profile}  # no profile files installed: defaults and environment only
        values = load_profile(str(self.profile), set(self.settings_cls.model_fields))
        values["profile"] = str(self.profile)
        return values


class TrainerSettings(CommonSettings):
    """Everything `isco train` needs besides the data paths given on the command line."""

    model_config = SettingsConfigDict(
        env_prefix="ISCO_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    profile: str = Field(DEFAULT_PROFILE, description="quick | full | path to a profile YAML")
    use_default_corpus: bool = Field(
        True, description="train on the default ESCO/ISCO corpus (plus user data)"
    )
    corpus_sources: list[str] | None = Field(None, description="corpus record kinds; None = all")
    corpus_languages: list[str] = Field(
        default_factory=lambda: ["en"],
        description="languages of the default corpus (ISO 639-1; 'en' always): each other language adds "
        "ESCO's labels in it (shared/corpus_multilingual.py), the held-out occupations' labels never",
    )
    multilingual_max_labels: int | None = Field(
        2,
        ge=1,
        description="at most this many ESCO labels per occupation and language (the preferred label always, "
        "then alternatives in a seeded order; None = all): 104k labels in the 25 languages at 2, 59k at 1",
    )
    max_train_examples: int | None = Field(
        None, ge=1, description="cap on training examples (a stratified sample), for quick runs"
    )
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    index_test: bool = Field(
        True,
        description="once the test split is scored (and the current best re-scored on it), add its "
        "records to the model's kNN and lexical indexes: the product then knows every labelled title; dev "
        "sets are scored after that",
    )
    refit_head_epochs: int = Field(
        3,
        ge=0,
        description="after indexing, train the cosine head this many epochs more on every indexed record "
        "(train, validation, test embeddings in the kNN index); 0: off",
    )
    refit_head_lr: float = Field(3e-4, gt=0, description="Adam learning rate of the head refit")
    devsets_dir: Path = Field(DEVSETS_DIR, description="extra evaluation sets (*.csv); never trained on")
    replay_size: int = Field(
        5000, ge=0, description="original training examples mixed into a corrections run"
    )
    correction_repeats: int = Field(3, ge=1, description="times each correction appears in a corrections run")
    promotion_min_delta: float = Field(0.0, ge=0, description="margin a candidate must beat the best by")
    finetune: dict[str, Any] = Field(default_factory=dict, description="FinetuneConfig fields")

    @field_validator("corpus_languages")
    @classmethod
    def _known_languages(cls, value: list[str]) -> list[str]:
        languages = check_languages(value)
        if "en" not in languages:
            raise ValueError("must include 'en' (the ESCO, ISCO-08 and ONS sources every model trains on)")
        return languages

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init_kwargs = getattr(init_settings, "init_kwargs", {})
        env_profile = env_settings().get("profile") or dotenv_settings().get("profile")
        profile = _ProfileSource(settings_cls, init_kwargs, env_profile)
        return init_settings, env_settings, dotenv_settings, profile, file_secret_settings

    def finetune_config(self, **overrides: Any) -> FinetuneConfig:
        """The model recipe as a `FinetuneConfig` (unknown fields are an error, not silently ignored)."""
        values = {**self.finetune, **{k: v for k, v in overrides.items() if v is not None}}
        unknown = sorted(set(values) - set(FinetuneConfig.model_fields))
        if unknown:
            raise ProfileError(
                f"profile {self.profile}: unknown setting(s) {', '.join(unknown)}; trainer settings are "
                f"{', '.join(sorted(type(self).model_fields))}; finetune settings are "
                f"{', '.join(sorted(FinetuneConfig.model_fields))}"
            )
        try:
            return FinetuneConfig.model_validate(values)
        except ValidationError as exc:
            raise ProfileError(f"profile {self.profile}: invalid finetune settings: {exc}") from None

    @property
    def runs_dir(self) -> Path:
        """Per-run reports (invalid rows, outliers, metrics) live here, also for failed runs."""
        return self.data_dir / "runs"
