"""Request and result schemas: one definition used by the CLI, inference service, gateway and workers."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from shared.language import LANGUAGES, normalise_code
from shared.text import INDUSTRY_MAX_CHARS

# Why a record is routed to a human coder (Prediction.review_reasons), in the order they are checked.
REVIEW_REASONS = (
    "not_coded",  # no level cleared its threshold
    "below_threshold",  # answered at a coarser level than the 4-digit unit group
    "not_an_occupation",  # student, retired, unemployed, homemaker, unknown ...
    "unsupported_language",  # a language or script the model does not cover (model.json `languages`)
    "language_mismatch",  # the record's `language` hint contradicts what its text is written in
)

MAX_TEXT_CHARS = 2000  # longer fields are truncated (and flagged): the model reads at most ~128 tokens anyway

# "Has text": at least one character that is not white space (`str.isspace`, what `strip` removes). JSON
# Schema patterns are ECMA-262, whose \S differs from Python's (\x1c-\x1f, \x85 and \ufeff): the pattern
# lists Python's white space explicitly, so clients, fuzzers and the validator below agree on every string.
_WHITE_SPACE = "".join(f"\\u{ord(c):04x}" for c in map(chr, range(0x3001)) if c.isspace())
HAS_TEXT = f"[^{_WHITE_SPACE}]"
_HAS_TEXT = re.compile(HAS_TEXT)

# A `language` hint as the validator reads it (`normalise_code`: surrounding white space, any case), as a
# pattern, so the schema refuses what the API refuses: one of the codes, or white space alone (no hint).
_CASELESS_CODES = "|".join("".join(f"[{c}{c.upper()}]" for c in code) for code in LANGUAGES)
LANGUAGE_HINT = f"^[{_WHITE_SPACE}]*(?:{_CASELESS_CODES})?[{_WHITE_SPACE}]*$"

# The rule "a title or a duties description" as JSON schema, so that clients and fuzzers know it too.
TEXT_REQUIRED: dict[str, Any] = {
    "anyOf": [
        {"required": ["job_title"], "properties": {"job_title": {"pattern": HAS_TEXT}}},
        {"required": ["duties_description"], "properties": {"duties_description": {"pattern": HAS_TEXT}}},
    ]
}


def _integral_float_as_int(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# JSON Schema's "integer" is any number without a fraction (9.0 included); strict pydantic refuses a float,
# so an integral one is read as the integer it is before the strict check (which still refuses "5" and true).
JsonInt = Annotated[int, BeforeValidator(_integral_float_as_int)]


class JobRecord(BaseModel):
    """One job description to code: a title and/or a duties description, optionally the employer's industry
    (context only: a record with an industry and neither title nor duties is refused)."""

    # Request models are strict: a JSON value of the wrong type is refused (422), never converted ("explain":
    # 0, "top_k": "5" or true), so what the API accepts is what its JSON schema says.
    model_config = ConfigDict(strict=True, json_schema_extra=TEXT_REQUIRED)

    id: str | None = Field(None, max_length=200, description="caller's identifier, echoed back")
    job_title: str = Field("", description="job title as written", examples=["primary school teacher"])
    duties_description: str = Field(
        "",
        description="main tasks and duties",
        examples=["teaches reading and arithmetic to children aged 6-11"],
    )
    industry: str = Field(
        "",
        description="the employer's main activity, e.g. 'paper manufacturing'; optional (empty or white "
        f"space: absent; longer than {INDUSTRY_MAX_CHARS} characters: truncated and flagged)",
        examples=["paper manufacturing"],
    )

    language: str | None = Field(
        None,
        description="optional hint: the ISO 639-1 code of the language the record is written in, one of "
        + ", ".join(LANGUAGES)
        + " (case-insensitive; empty: absent, the language is identified from the text). A hint the text "
        "contradicts is coded as the hint says and sent to a coder with `language_mismatch`",
        examples=["de"],
        json_schema_extra={"pattern": LANGUAGE_HINT},
    )

    @field_validator("language", mode="before")
    @classmethod
    def _known_language(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value  # None, or a wrong type the strict check refuses
        code = normalise_code(value)
        if not code:
            return None
        if code not in LANGUAGES:
            raise ValueError(f"unknown language {value!r}: accepted codes are {', '.join(LANGUAGES)}")
        return code

    @model_validator(mode="after")
    def _not_empty(self) -> JobRecord:
        if not _HAS_TEXT.search(self.job_title) and not _HAS_TEXT.search(self.duties_description):
            raise ValueError("job_title and duties_description are both empty: at least one is required")
        return self


class Thresholds(BaseModel):
    """Minimum calibrated confidence to answer at each level (4 = unit group ... 1 = major group).
    Unknown keys are refused (422), so a typo such as `units` does not silently leave the default."""

    model_config = ConfigDict(extra="forbid", strict=True)

    unit: float = Field(0.5, ge=0, le=1, description="4-digit threshold; below it the answer falls back")
    minor: float = Field(0.5, ge=0, le=1)
    sub_major: float = Field(0.5, ge=0, le=1)
    major: float = Field(0.5, ge=0, le=1)

    def for_level(self, level: int) -> float:
        return {4: self.unit, 3: self.minor, 2: self.sub_major, 1: self.major}[level]


class GroupRef(BaseModel):
    code: str
    level: int
    title: str
    confidence: float


class Alternative(BaseModel):
    code: str
    title: str
    confidence: float


class EvidenceExample(BaseModel):
    """A training example close to the input: why the model leans towards a code (for reviewers)."""

    text: str = Field(description="the training text (job title and duties as the model read them)")
    unit_code: str = Field(description="its 4-digit unit group")
    similarity: float = Field(description="cosine similarity to the input, -1..1")


class Prediction(BaseModel):
    """The coding of one record."""

    id: str | None = None
    coded: bool = Field(description="false when no level cleared its threshold")
    isco_code: str | None = Field(description="deepest code whose confidence clears its level's threshold")
    level: int | None = Field(description="4 unit group, 3 minor, 2 sub-major, 1 major; null when not coded")
    title: str | None
    confidence: float | None
    is_fallback: bool = Field(
        description="true when no 4-digit unit group is given: a coarser group, or not coded (coded=false)"
    )
    unit_code: str = Field(description="most likely 4-digit unit group")
    unit_title: str
    unit_confidence: float
    alternatives: list[Alternative] = Field(description="top-k unit groups, most likely first")
    path: list[GroupRef] = Field(description="major -> sub-major -> minor -> unit of the best unit group")
    model_version: str
    truncated: bool = Field(False, description="input was longer than the limit and was truncated")
    language: str | None = Field(
        None,
        description="ISO 639-1 code of the language the record was coded as: the request's `language` hint, "
        "else the language identified from title, duties and industry together, else (too short or ambiguous "
        "to tell) the likeliest of the model's languages. A language or script the model does not cover "
        "(e.g. Russian, Arabic, Chinese for every model; all but English for an English-only model) sends "
        "the record to a coder (`unsupported_language`)",
    )
    language_detected: str | None = Field(
        None,
        description="ISO 639-1 code identified from the text alone when the identifier is sure, else null; "
        "differs from `language` when a hint contradicts the text (`language_mismatch`)",
    )
    routing_confidence: float | None = Field(
        None,
        description="calibrated probability that the 4-digit answer is right (the model's router, fitted on "
        "held-out occupations); auto-coded only at or above the threshold fitted for the target precision, "
        "or when the nearest training text (see `evidence`) has the answer's code at the similarity fitted "
        "for that precision (then at least the precision that rule reached)",
    )
    needs_review: bool = Field(
        True, description="true when the record should go to a human coder instead of being auto-coded"
    )
    review_reasons: list[str] = Field(
        default_factory=list,
        description="why it needs review: " + ", ".join(REVIEW_REASONS),
    )
    evidence: list[EvidenceExample] | None = Field(
        None,
        description="with explain=true: the nearest training examples, most similar first (null otherwise, "
        "and empty when the model has no stored examples)",
    )


class PredictOptions(BaseModel):
    model_config = ConfigDict(strict=True)

    top_k: JsonInt = Field(5, ge=1, le=20)
    thresholds: Thresholds | None = None


class PredictRequest(PredictOptions):
    records: list[JobRecord] = Field(min_length=1)
    explain: bool = Field(False, description="add `evidence` (nearest training examples) to each result")


class PredictResponse(BaseModel):
    model_version: str
    results: list[Prediction]


# ----------------------------------------------------------------------------------------------------
# Errors: one shape for every error the public API sends
# ----------------------------------------------------------------------------------------------------


class FieldError(BaseModel):
    """One problem with a request's input: where it is, what is wrong, and its kind."""

    field: str = Field(description="where the problem is, e.g. `records.3.job_title`, or `body`")
    reason: str = Field(description="what is wrong, for a person to read")
    type: str = Field(description="the kind of problem, e.g. `missing`, `string_type`, `json_invalid`")


class ErrorInfo(BaseModel):
    """A refusal that is not about one input field: its kind, a sentence, and any details that help (a limit,
    the job's status, the dependency that is down)."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="the kind, e.g. `not_found`, `too_large`, `missing_columns`")
    message: str = Field(description="what happened and what to do, for a person to read")


class ErrorResponse(BaseModel):
    """The body of every error answer (4xx, 5xx). `detail` is a list of FieldError when the request's input
    is invalid (422), an ErrorInfo for a refusal with a kind (e.g. 404 `not_found`, 413 `too_large`, 422 for a
    CSV file that cannot be coded, 503 `database_unavailable`), or a sentence (401, inference failures)."""

    detail: list[FieldError] | ErrorInfo | str
