"""Pydantic request and response models of the service (what OpenAPI documents)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobState = Literal["queued", "running", "succeeded", "failed", "expired"]


class ErrorBody(BaseModel):
    """What went wrong, in a stable code and a readable message."""

    code: str = Field(description="bad_input, unauthorized, not_found, too_large, unsupported_type, ...")
    message: str


class ErrorResponse(BaseModel):
    """Every error the service returns: ``{"error": {"code", "message"}}``."""

    error: ErrorBody


class Health(BaseModel):
    """Liveness."""

    status: Literal["ok"] = "ok"


class ModelState(BaseModel):
    """Where one model stands: ``loading``, ``warming``, ``ready`` or ``failed``."""

    state: str
    device: str | None = None
    error: str | None = Field(default=None, description="Why it failed (no server paths).")
    torch_threads: int | None = Field(
        default=None, description="torch's intra-op threads in the model's device thread (once it is loaded)."
    )


class JobsState(BaseModel):
    """The job worker: ``running``, or ``stopped`` (not started, or one of its tasks ended)."""

    state: Literal["running", "stopped"]


class Threads(BaseModel):
    """The thread budgets the service set at start-up."""

    cpu_count: int = Field(description="CPU cores this process may use.")
    torch_intra_op: int = Field(description="torch's intra-op threads of a forward pass, set in each device thread.")
    decode_workers: int = Field(description="Threads that unpack, read, preprocess and finish inputs.")
    blas: dict[str, int] = Field(description="BLAS threads of each loaded BLAS library (NumPy's, SciPy's).")
    switch_interval_ms: float = Field(description="Python's thread switch interval (sys.getswitchinterval), in ms.")


class Readiness(BaseModel):
    """Readiness of every enabled model and of the job worker, and the service's thread budgets."""

    ready: bool
    models: dict[str, ModelState]
    jobs: JobsState
    threads: Threads | None = None


class DataCard(BaseModel):
    """A dataset's card."""

    name: str
    text: str | None = None


class OutputHeadInfo(BaseModel):
    """One output head of a model and its labels."""

    name: str
    labels: list[str]
    activation: str


class ModelInfo(BaseModel):
    """One served task: checkpoint, input contract, heads and labels, options, model and data cards."""

    task: str
    title: str
    state: str
    model_name: str
    checkpoint_version: str
    checkpoint_file: str
    labels: list[str]
    heads: list[OutputHeadInfo]
    contract: dict[str, Any]
    options_schema: dict[str, Any] = Field(
        description="JSON schema of the task's options (the `options` form field of predict, explain and jobs)."
    )
    default_options: dict[str, Any] = Field(default_factory=dict, description="The options this server applies.")
    synthetic_demo: bool = Field(
        default=False, description="The model was trained on synthetic data: its outputs on real inputs mean nothing."
    )
    max_batch_size: int
    metrics: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)
    model_card: str | None = None
    data_card: DataCard | None = None


class ModelList(BaseModel):
    """Every served task."""

    models: list[ModelInfo]


class FileLink(BaseModel):
    """A file a prediction wrote (a mask, an explanation), fetched through ``url``."""

    name: str
    url: str
    size: int
    role: str | None = Field(
        default=None, description="What the file is (segmentation, probabilities, overlay, explanation, result...)."
    )
    deferred: bool = Field(
        default=False,
        description="Not made yet: drawn when its url is first fetched (an explanation picture); size is 0 until then.",
    )


class ItemOutcome(BaseModel):
    """The result of one input, as the CLI's report writes it, with links to the files it wrote."""

    input: str = Field(
        description="Which upload this input came from: files[i], files[i]#k inside an archive, "
        "files[i,j] for an input made of several uploads; never a file or folder name."
    )
    name: str | None = Field(default=None, description="The opaque name its output files carry (input-NNN).")
    source: dict[str, str] = Field(default_factory=dict, description="Each role's upload reference.")
    status: Literal["ok", "error", "skipped"]
    outputs: dict[str, Any] = Field(default_factory=dict)
    files: list[FileLink] = Field(default_factory=list, description="This input's files, by role.")
    error: str | None = None
    seconds: float = 0.0
    timings: dict[str, float] = Field(default_factory=dict)


class ModelSummary(BaseModel):
    """The model behind a result: its version and where it comes from."""

    model_config = ConfigDict(protected_namespaces=())

    task: str
    model_name: str
    version: str
    synthetic_demo: bool = Field(
        description="The model was trained on synthetic data (every `medinfer demo` model): its outputs on real "
        "inputs mean nothing."
    )
    provenance: dict[str, Any] = Field(
        default_factory=dict,
        description="dataset, data_card, seed, trained_at, code_version, synthetic (stands_in_for: the real "
        "dataset's card, for synthetic data; trained_by: medinfer demo, for demo models).",
    )


class PredictResponse(BaseModel):
    """A synchronous prediction: one outcome per input, and links to the files written."""

    id: str | None = Field(
        description="Result id; files are served under /api/v1/jobs/{id}/files/. null when the answer holds the "
        "whole result and nothing was kept (a classification without explanation and without save=true)."
    )
    task: str
    checkpoint_version: str
    model: ModelSummary | None = Field(default=None, description="The model behind these results.")
    results: list[ItemOutcome]
    files: list[FileLink] = Field(default_factory=list)


class JobLinks(BaseModel):
    """Where to poll a job and fetch its result."""

    self: str
    result: str


class Job(BaseModel):
    """An asynchronous job's state."""

    id: str
    task: str
    state: JobState
    progress: float = Field(ge=0.0, le=1.0)
    error: str | None = None
    attempts: int = 0
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    links: JobLinks


class JobResult(BaseModel):
    """A finished job: the report (as ``report.json``) and the files written."""

    id: str
    task: str
    state: JobState
    checkpoint_version: str
    model: ModelSummary | None = Field(default=None, description="The model behind these results.")
    results: list[ItemOutcome]
    files: list[FileLink] = Field(default_factory=list)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "Bad input: the files cannot be used (the message names the file and the problem)."),
        (401, "Missing or wrong API key."),
        (404, "Unknown task, job or file."),
        (413, "Upload or unpacked archive too large."),
        (415, "Unsupported media type or no usable input among the files."),
        (422, "Request validation failed."),
        (503, "Model not ready, or queue full (see Retry-After)."),
        (504, "The request or every input ran past its time limit."),
    )
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entry for these error codes."""
    return {c: ERROR_RESPONSES[c] for c in codes}


# -- the Open Inference Protocol (KServe v2) ---------------------------------------------------------------------------
OipParameters = dict[str, str | int | float | bool]


class OipError(BaseModel):
    """An error of the Open Inference Protocol routes: ``{"error": message}``."""

    error: str


class OipServerMetadata(BaseModel):
    """``GET /v2``: the server and the protocol extensions it serves."""

    name: str
    version: str
    extensions: list[str]


class OipMetadataTensor(BaseModel):
    """An input or output tensor of a model: its name, datatype and shape (-1 for a variable size)."""

    name: str
    datatype: str
    shape: list[int]
    parameters: OipParameters = Field(default_factory=dict, description="Labels, units, channel order...")


class OipModelMetadata(BaseModel):
    """``GET /v2/models/{name}``: the model's versions, inputs and outputs."""

    name: str
    versions: list[str] = Field(default_factory=list)
    platform: str
    inputs: list[OipMetadataTensor]
    outputs: list[OipMetadataTensor]
    parameters: OipParameters = Field(default_factory=dict)


class OipRequestInput(BaseModel):
    """An input tensor: ``data`` row-major (flat or nested), or ``binary_data_size`` bytes after the JSON."""

    name: str
    shape: list[int]
    datatype: str
    parameters: OipParameters | None = None
    data: list[Any] | None = None


class OipRequestOutput(BaseModel):
    """An output to answer; ``binary_data``: as binary data, ``classification``: its top k as labels."""

    name: str
    parameters: OipParameters | None = None


class OipInferRequest(BaseModel):
    """``POST /v2/models/{name}/infer``: the inputs, the outputs wanted and the task's options as parameters."""

    id: str | None = None
    parameters: OipParameters | None = None
    inputs: list[OipRequestInput]
    outputs: list[OipRequestOutput] | None = None


class OipResponseOutput(BaseModel):
    """An output tensor: ``data`` flattened row-major, or ``binary_data_size`` bytes after the JSON."""

    name: str
    shape: list[int]
    datatype: str
    parameters: OipParameters | None = None
    data: list[Any] | None = None


class OipInferResponse(BaseModel):
    """The answer of an inference request."""

    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: OipParameters | None = None
    outputs: list[OipResponseOutput]
