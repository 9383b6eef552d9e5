"""Service settings: one pydantic-settings class read from ``MEDINFER_*`` environment variables."""

from __future__ import annotations

import difflib
import errno
import ipaddress
import os
import socket
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipelines.common.paths import checkpoints_dir

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "ip6-localhost"})
ENV_PREFIX = "MEDINFER_"
#: ``MEDINFER_*`` variables read outside :class:`Settings` (tests and tools); any other unknown one is refused
OTHER_VARIABLES = frozenset({"MEDINFER_TEST_DELAY_S", "MEDINFER_WRITE_GOLDEN"})
#: shortest accepted API key (``openssl rand -hex 24`` gives 48 characters)
MIN_KEY_LENGTH = 16


def is_loopback(host: str) -> bool:
    """Whether a host name or address is loopback-only: a loopback name, ``127.0.0.0/8``, ``::1`` (or mapped)."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name in LOOPBACK_HOSTS:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _default_data_dir() -> Path:
    return Path.home() / ".cache" / "medinfer" / "service"


class Settings(BaseSettings):
    """Everything ``medinfer serve`` can be told, with the embedded single-machine defaults.

    Every field reads ``MEDINFER_<FIELD>`` (``MEDINFER_API_KEYS``, ``MEDINFER_DATA_DIR``...).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    def __init__(self, **values: Any) -> None:
        check_environment(os.environ)
        super().__init__(**values)

    host: str = Field(
        default="127.0.0.1",
        description="Address `medinfer serve` listens on (beyond loopback only with API keys or `MEDINFER_INSECURE`).",
    )
    port: int = Field(default=8000, ge=0, le=65535, description="Port `medinfer serve` listens on.")
    checkpoints: Path = Field(
        default_factory=checkpoints_dir,
        description="Installed checkpoints folder, the CLI's: MEDINFER_CHECKPOINTS or ~/.cache/medinfer/checkpoints.",
    )
    data_dir: Path = Field(default_factory=_default_data_dir, description="Job database, artefacts and uploads.")
    tasks: str = Field(default="", description="Comma-separated tasks to serve; empty: all with a checkpoint.")
    device: str = Field(default="auto", description="auto, cpu or cuda[:N].")
    amp: bool = Field(default=True, description="Mixed precision (float16 autocast) on CUDA; never on CPU.")

    max_batch_size: int = Field(default=8, ge=1, description="Most requests per forward pass (capped by the model).")
    max_batch_delay_ms: float = Field(default=10.0, ge=0, description="How long the first request of a batch waits.")
    max_queue: int = Field(
        default=64,
        ge=1,
        description="Inputs of outstanding work per model (uploads being received or unpacked, inputs being "
        "decoded, queued, run or finished) before a request is answered 503.",
    )
    max_queue_mb: float = Field(
        default=2048.0,
        gt=0,
        description="Megabytes of outstanding work per model (declared upload sizes, then input files, then decoded "
        "tensors) before 503; waived when nothing else is outstanding.",
    )
    decode_workers: int = Field(
        default=2, ge=1, description="Threads that unpack, decode and finish inputs, shared by every model."
    )
    torch_threads: int = Field(
        default=0,
        ge=0,
        description="torch's intra-op threads for the forward passes (0: OMP_NUM_THREADS if set, else the CPU "
        "cores left beside the decode workers, at least 1). Set once at start-up; shown by /readyz.",
    )
    blas_threads: int = Field(
        default=1,
        ge=1,
        description="Threads of NumPy's and SciPy's BLAS, used by the decode threads (1: each decode thread is one "
        "core). Set once at start-up; shown by /readyz.",
    )
    switch_interval_ms: float = Field(
        default=5.0,
        gt=0,
        le=100,
        description="Python's thread switch interval (sys.setswitchinterval) in ms: how long a busy decode thread "
        "may hold the interpreter before the device thread gets it back between two torch operations. Set once at "
        "start-up; shown by /readyz.",
    )
    request_timeout_s: float = Field(
        default=300.0, gt=0, description="Seconds a synchronous prediction may take in all before it is answered 504."
    )
    item_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Seconds one input may take from the start of its decoding to the end of its finishing; beyond, "
        "it gets a 'timed out' error (its thread keeps its slot until it returns).",
    )
    task_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='Default task options per task, as JSON (MEDINFER_TASK_OPTIONS=\'{"TASK": {"KEY": VALUE}}\'); '
        "each task's options model validates them and a request's `options` field overrides them.",
    )
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After seconds on an overloaded 503.")
    retry_after_max_s: int = Field(
        default=120,
        ge=1,
        description="Longest Retry-After of an overloaded 503 (it grows with the outstanding work from retry_after_s).",
    )

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
    max_queued_jobs: int = Field(
        default=100, ge=1, description="Most jobs queued or running; beyond, a submission is answered 503."
    )
    max_job_items: int = Field(default=1000, ge=1, description="Most inputs in one job; beyond, 413.")
    max_jobs_disk_mb: float = Field(
        default=20480.0,
        gt=0,
        description="Most megabytes of job uploads and results under the data folder; beyond, a submission is 503.",
    )
    jobs_retry_after_s: int = Field(
        default=30, ge=1, description="Retry-After seconds when a job is refused for a full queue or disk."
    )
    warmup: bool = Field(default=True, description="Run a warm-up input before a model reports ready.")

    ray_replicas: dict[str, int] = Field(
        default_factory=dict,
        description="`medinfer serve --ray`: replicas of each task's model deployment, as JSON "
        "mapping a task's name to its replicas; a task not named gets 1.",
    )
    ray_gpus_per_replica: float = Field(
        default=0.0,
        ge=0,
        description="`medinfer serve --ray`: GPUs each model replica reserves (Ray's num_gpus; a fraction shares "
        "a GPU between replicas; 0: the replicas run where no GPU is reserved, on the CPU unless MEDINFER_DEVICE "
        "says otherwise).",
    )
    ray_cpus_per_replica: float = Field(
        default=1.0,
        ge=0,
        description="`medinfer serve --ray`: CPUs each model replica reserves (Ray's num_cpus; also its torch "
        "threads unless MEDINFER_TORCH_THREADS is set). The ingress reserves none.",
    )
    ray_max_queued_requests: int = Field(
        default=-1,
        ge=-1,
        description="`medinfer serve --ray`: inputs that wait at the ingress for a busy task's model replicas "
        "before a request is answered 503 with Retry-After (Ray Serve's max_queued_requests; -1: no bound beyond "
        "MEDINFER_MAX_QUEUE).",
    )

    @field_validator("ray_replicas")
    @classmethod
    def _replicas_positive(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {task: n for task, n in value.items() if n < 1}
        if bad:
            raise ValueError(f"each task needs at least 1 replica, got {bad}")
        return value

    @field_validator("ray_max_queued_requests")
    @classmethod
    def _queued_not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (no bound) or at least 1 (Ray Serve has no 0)")
        return value

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
        """The accepted API keys from ``api_keys`` and ``api_keys_file`` (blank and ``#`` lines of the file skipped).

        Raises:
            ValueError: if the key file cannot be read or is not text, or a key is shorter than ``MIN_KEY_LENGTH``
                (the message gives its place and length, never the key).
        """
        short = f"keys must be at least {MIN_KEY_LENGTH} characters (e.g. `openssl rand -hex 24`)"
        keys: set[str] = set()
        for i, key in enumerate((k.strip() for k in self.api_keys.split(",") if k.strip()), 1):
            if len(key) < MIN_KEY_LENGTH:  # never echo the key itself
                raise ValueError(f"API key {i} of MEDINFER_API_KEYS has {len(key)} characters; {short}")
            keys.add(key)
        if self.api_keys_file is not None:
            try:
                text = self.api_keys_file.expanduser().read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ValueError(f"{self.api_keys_file}: API key file cannot be read ({reason})") from exc
            for number, line in enumerate(text.splitlines(), 1):
                key = line.strip()
                if not key or key.startswith("#"):  # blank lines and comments, however indented
                    continue
                if len(key) < MIN_KEY_LENGTH:
                    raise ValueError(
                        f"{self.api_keys_file}: the API key on line {number} has {len(key)} characters; {short}"
                    )
                keys.add(key)
        return frozenset(keys)

    def check_bind(self, host: str | None = None) -> None:
        """Refuse to listen beyond loopback without API keys unless ``insecure``.

        Raises:
            ValueError: when the bind would expose an unauthenticated service.
        """
        target = host or self.host
        if not is_loopback(target) and not self.keys() and not self.insecure:
            raise ValueError(
                f"refusing to listen on {target} without API keys: set MEDINFER_API_KEYS (or "
                "MEDINFER_API_KEYS_FILE), bind 127.0.0.1, or pass --insecure"
            )

    def check_port(self) -> None:
        """Refuse a port that cannot be listened on, before any model loads (uvicorn would say so only after).

        Raises:
            ValueError: the port is in use or not permitted.
        """
        problem = port_problem(self.host, self.port)
        if problem:
            raise ValueError(f"{problem}; stop what holds it or choose another port (--port)")


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (in use, not permitted), or ``None`` when it can.

    Found by binding a socket with ``SO_REUSEADDR`` as uvicorn does, so that a port held by another server is
    reported before minutes of loading or training rather than after.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is already in use (another medinfer serve or demo?)"
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse ``MEDINFER_*`` variables that nothing reads (a typo, say a singular ``API_KEY``, would leave keys unset).

    Args:
        environ: the environment (``os.environ``); names compare case-insensitively, as pydantic-settings reads them.

    Raises:
        ValueError: naming each unknown variable and the nearest known name.
    """
    known = sorted({ENV_PREFIX + name.upper() for name in Settings.model_fields} | OTHER_VARIABLES)
    problems, unmatched = [], False
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        # compare what follows the prefix: the shared prefix alone would make every name look close
        suffixes = {k.removeprefix(ENV_PREFIX): k for k in known}
        close = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), list(suffixes), n=1, cutoff=0.6)
        problems.append(f"{name} (did you mean {suffixes[close[0]]}?)" if close else name)
        unmatched |= not close
    if problems:
        listing = f"; the known ones are {', '.join(known)}" if unmatched else ""
        raise ValueError(f"unknown environment variable(s): {', '.join(problems)}{listing}")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests pass their own ``Settings`` to ``create_app``)."""
    return Settings()


#: what fields whose default comes from a function default to, as a user reads it (the function may read the
#: environment or the home folder, which a generated table must not); tests check them against the functions
FACTORY_DEFAULTS: dict[str, str] = {
    "checkpoints": "~/.cache/medinfer/checkpoints",
    "data_dir": "~/.cache/medinfer/service",
}
#: the marker comments around the generated table in README.md and docs/service.md
TABLE_BEGIN = (
    "<!-- settings table: generated from app/settings.py by `python -m app.settings --update FILE`; "
    "do not edit by hand -->"
)
TABLE_END = "<!-- end of settings table -->"


def _type_words(annotation: Any) -> str:
    names = {str: "text", int: "integer", float: "number", bool: "true/false", Path: "path"}
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    if annotation in names:
        return names[annotation]
    if getattr(annotation, "__origin__", None) is dict:
        return "JSON object"
    if len(args) == 1 and args[0] in names:  # X | None
        return names[args[0]]
    return str(annotation)


def _bounds(metadata: list[Any]) -> str:
    words = []
    for item in metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(item, attr, None)
            if value is not None:
                words.append(f"{sign} {value:g}")
    return ", ".join(words)


def _default_words(default: Any) -> str:
    """A default as the table shows it: a value in backticks, or ``empty`` / ``none`` in words."""
    import json

    if default is None:
        return "none"
    if isinstance(default, bool):
        text = str(default).lower()
    elif isinstance(default, float):
        text = f"{default:g}"
    elif isinstance(default, dict):
        text = json.dumps(default)
    else:
        text = str(default)
    return f"`{text}`" if text else "empty"


def settings_markdown_table() -> str:
    """The Markdown table of every ``MEDINFER_*`` setting of :class:`Settings`: variable, type, default, meaning.

    Built from the class alone (never the environment), so it reads the same on every machine; README.md holds it
    between :data:`TABLE_BEGIN` and :data:`TABLE_END` (``python -m app.settings --update README.md``).

    Returns:
        The table, one row per field in declaration order, ending with a newline.

    Raises:
        ValueError: a field whose default comes from a function missing from :data:`FACTORY_DEFAULTS`, or a field
            without a description.
    """
    rows = ["| Variable | Type | Default | Meaning |", "| --- | --- | --- | --- |"]
    for name, info in Settings.model_fields.items():
        if info.default_factory is None:
            default = _default_words(info.default)
        elif name in FACTORY_DEFAULTS:
            default = f"`{FACTORY_DEFAULTS[name]}`"
        elif info.default_factory in (dict, list):
            default = _default_words(info.default_factory())
        else:
            raise ValueError(f"Settings.{name}: its default comes from a function; add it to FACTORY_DEFAULTS")
        meaning = info.description
        if not meaning:
            raise ValueError(f"Settings.{name} has no description; give the field one")
        kind = _type_words(info.annotation)
        bounds = _bounds(info.metadata)
        kind = f"{kind}, {bounds}" if bounds else kind
        variable = f"`{ENV_PREFIX}{name.upper()}`"
        cell = meaning.replace("|", "\\|")  # a pipe would end the cell
        rows.append(f"| {variable} | {kind} | {default} | {cell} |")
    return "\n".join(rows) + "\n"


def replace_settings_table(text: str) -> str:
    """``text`` (README.md) with the part between the table's marker lines replaced by the current table.

    Raises:
        ValueError: the marker lines are missing, repeated or in the wrong order.
    """
    begin, end = text.count(TABLE_BEGIN), text.count(TABLE_END)
    if begin != 1 or end != 1 or text.index(TABLE_BEGIN) > text.index(TABLE_END):
        raise ValueError(f"expected one line {TABLE_BEGIN!r} and, after it, one line {TABLE_END!r}")
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    return f"{head}{TABLE_BEGIN}\n{settings_markdown_table()}{TABLE_END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """``python -m app.settings --markdown`` prints the table; ``--update FILE`` rewrites FILE's table in place;
    ``--check FILE`` exits 1 when FILE's table is not the current one."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m app.settings", description=main.__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the settings table")
    group.add_argument("--update", type=Path, metavar="FILE", help="rewrite the table between FILE's markers")
    group.add_argument("--check", type=Path, metavar="FILE", help="exit 1 when FILE's table is out of date")
    args = parser.parse_args(argv)
    if args.markdown:
        print(settings_markdown_table(), end="")
        return 0
    path: Path = args.update or args.check
    try:
        text = path.read_text(encoding="utf-8")
        updated = replace_settings_table(text)
    except (OSError, ValueError) as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if updated != text:
            print(f"{path}: the settings table is out of date; run `python -m app.settings --update {path}`")
            return 1
        return 0
    if updated != text:
        path.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
