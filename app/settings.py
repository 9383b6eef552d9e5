"""Service settings: one pydantic-settings class read from ``MEDINFER_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipelines.common.paths import checkpoints_dir

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "ip6-localhost"})


def _default_data_dir() -> Path:
    return Path.home() / ".cache" / "medinfer" / "service"


class Settings(BaseSettings):
    """Everything ``medinfer serve`` can be told, with the embedded single-machine defaults.

    Every field reads ``MEDINFER_<FIELD>`` (``MEDINFER_API_KEYS``, ``MEDINFER_DATA_DIR``...).
    """

    model_config = SettingsConfigDict(env_prefix="MEDINFER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    checkpoints: Path = Field(
        default_factory=checkpoints_dir,
        description="Installed checkpoints folder, the CLI's: MEDINFER_CHECKPOINTS or ~/.cache/medinfer/checkpoints.",
    )
    data_dir: Path = Field(default_factory=_default_data_dir, description="Job database, artefacts and uploads.")
    tasks: str = Field(default="", description="Comma-separated tasks to serve; empty: all with a checkpoint.")
    device: str = Field(default="auto", description="auto, cpu or cuda[:N].")
    amp: bool = True

    max_batch_size: int = Field(default=8, ge=1, description="Most requests per forward pass (capped by the model).")
    max_batch_delay_ms: float = Field(default=10.0, ge=0, description="How long the first request of a batch waits.")
    max_queue: int = Field(default=64, ge=1, description="Requests waiting per model before 503.")
    task_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='Default task options per task, as JSON (MEDINFER_TASK_OPTIONS=\'{"TASK": {"KEY": VALUE}}\'); '
        "each task's options model validates them and a request's `options` field overrides them.",
    )
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After seconds on an overloaded 503.")

    api_keys: str = Field(default="", description="Comma-separated API keys; when set, /api/v1 requires a Bearer key.")
    api_keys_file: Path | None = Field(default=None, description="File with one API key per line.")
    insecure: bool = Field(default=False, description="Allow listening beyond loopback without API keys.")

    max_upload_mb: float = Field(default=512.0, gt=0, description="Largest request body.")
    max_unpacked_mb: float = Field(default=2048.0, gt=0, description="Largest total size unpacked from archives.")
    max_archive_members: int = Field(default=4096, ge=1, description="Most members in one uploaded archive.")
    max_items_per_request: int = Field(default=32, ge=1, description="Most inputs in one synchronous prediction.")

    job_workers: int = Field(default=1, ge=1, description="Jobs processed at once.")
    job_max_attempts: int = Field(default=2, ge=1, description="Starts per job before a restart fails it.")
    result_ttl_s: float = Field(default=24 * 3600.0, gt=0, description="Seconds finished results are kept.")
    cleanup_interval_s: float = Field(default=60.0, gt=0, description="Seconds between expiry sweeps.")
    warmup: bool = Field(default=True, description="Run a warm-up input before a model reports ready.")

    @field_validator("tasks", "api_keys", mode="before")
    @classmethod
    def _join_lists(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            return ",".join(str(v) for v in value)
        return value

    @property
    def task_names(self) -> list[str]:
        """Enabled task names (empty: all with a checkpoint)."""
        return [t.strip() for t in self.tasks.split(",") if t.strip()]

    def keys(self) -> frozenset[str]:
        """The accepted API keys from ``api_keys`` and ``api_keys_file``.

        Raises:
            ValueError: if the key file cannot be read.
        """
        keys = {k.strip() for k in self.api_keys.split(",") if k.strip()}
        if self.api_keys_file is not None:
            try:
                text = self.api_keys_file.expanduser().read_text()
            except OSError as exc:
                raise ValueError(f"{self.api_keys_file}: API key file cannot be read ({exc.strerror})") from exc
            keys |= {line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}
        return frozenset(keys)

    def check_bind(self, host: str | None = None) -> None:
        """Refuse to listen beyond loopback without API keys unless ``insecure``.

        Raises:
            ValueError: when the bind would expose an unauthenticated service.
        """
        target = host or self.host
        if target not in LOOPBACK_HOSTS and not self.keys() and not self.insecure:
            raise ValueError(
                f"refusing to listen on {target} without API keys: set MEDINFER_API_KEYS (or "
                "MEDINFER_API_KEYS_FILE), bind 127.0.0.1, or pass --insecure"
            )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests pass their own ``Settings`` to ``create_app``)."""
    return Settings()
