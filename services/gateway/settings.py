"""Gateway settings (env prefix ISCO_)."""

from __future__ import annotations

from pydantic import Field, model_validator

from shared.settings import CommonSettings


class GatewaySettings(CommonSettings):
    """The public API: where inference lives, limits, auth."""

    inference_url: str = Field("http://127.0.0.1:8001", description="base URL of the inference service")
    inference_timeout_s: float = Field(30.0, gt=0, description="read timeout of one inference call")
    inference_connect_timeout_s: float = Field(2.0, gt=0)
    inference_retries: int = Field(2, ge=0, description="retries on connection errors (nothing was sent)")
    inference_pool_size: int = Field(64, ge=1, description="pooled keep-alive connections to inference")
    sync_batch_limit: int = Field(256, ge=1, description="records answered synchronously by /predict/batch")
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="JSON request bodies above this get 413 (uploads set their own)"
    )
    auth_disabled: bool = Field(False, description="dev mode: no API keys; refused unless env=dev or test")
    api_key_cache_s: float = Field(
        5.0, ge=0, description="validated keys are cached this long (revocation lag)"
    )
    review_session_hours: float = Field(
        12.0, gt=0, description="the review page's sign-in (a signed session cookie) lasts this long"
    )
    review_cookie_secure: bool = Field(
        False, description="send the review session cookie over HTTPS only (always on with ISCO_ENV=prod)"
    )

    @model_validator(mode="after")
    def _auth_only_off_in_dev(self) -> GatewaySettings:
        if self.auth_disabled and self.env == "prod":
            raise ValueError("ISCO_AUTH_DISABLED is only allowed with ISCO_ENV=dev or test")
        return self
