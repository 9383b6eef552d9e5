"""The Open Inference Protocol (KServe v2, Triton's HTTP/REST API) for the tasks whose input is a tensor.

A task takes tensors when its :class:`~pipelines.common.task.InputContract` has a ``tensor``
(:class:`~pipelines.common.task.TensorSpec`): an ECG signal, an H&E image. A request's tensor holds one input, or
a batch of them along a leading dimension; each element becomes one :class:`~app.runtime.ServedItem` (``data``
set, no files) that goes through the model's runtime like an uploaded file: the same ledger, the same dynamic
batches, the same ``read`` → preprocessing as the file (the task reads ``InputItem.data``), answered from memory.

Outputs are the task's heads as tensors: one head gives ``probabilities`` (FP32, batch × labels) and, for a
multi-label (sigmoid) head, ``decisions`` (BOOL, at the checkpoint's thresholds); several heads give one output
per head, named after it (and ``<head>_decisions`` for a sigmoid head). The values are the JSON result's (6
decimals). Labels are in each output's metadata ``parameters`` and, per request, through Triton's classification
extension (``"classification": k`` on a requested output: BYTES ``"value:index:label"`` of the top k).

Extensions: ``binary_tensor_data`` (raw little-endian tensors after the JSON, whose length the
``Inference-Header-Content-Length`` header gives; ``binary_data_size`` on inputs, ``binary_data`` on outputs,
``binary_data_output`` on the request) and ``classification``. Volumes take files (their geometry is in them): a
tensor request for one is refused, pointing at the file routes.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse, Response

from app.batching import Claim
from app.errors import ServiceError
from app.runtime import ModelRuntime, Outcome, ServedItem, failure_error
from app.service import API_PREFIX
from app.settings import Settings
from app.uploads import redact_paths
from pipelines.common.config import ConfigError, TaskOptions
from pipelines.common.task import TENSOR_DTYPES, TensorSpec

logger = logging.getLogger(__name__)

SERVER_NAME = "medinfer"
#: the protocol extensions served (reported by ``GET /v2``)
EXTENSIONS = ("binary_tensor_data", "classification")
#: what model metadata gives as ``platform`` (information only: a PyTorch module loaded from a checkpoint)
PLATFORM = "pytorch"
#: the header giving the length of the JSON part of a body that carries binary tensor data
HEADER_LENGTH = "Inference-Header-Content-Length"
#: protocol parameters (binary tensor data, classification extensions) besides the tasks' options
REQUEST_PARAMETERS = frozenset({"binary_data_output"})
INPUT_PARAMETERS = frozenset({"binary_data_size"})
OUTPUT_PARAMETERS = frozenset({"binary_data", "classification"})


def error_body(message: str) -> dict[str, str]:
    """The protocol's error object."""
    return {"error": message}


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """An error in the protocol's shape ``{"error": message}``."""
    return JSONResponse(error_body(message), status_code=status, headers=dict(headers or {}))


def files_only(rt: ModelRuntime) -> ServiceError:
    """The 400 of a tensor request to a model that takes files."""
    return ServiceError(
        400,
        f"model {rt.name!r} takes files, not tensors ({rt.task.contract.kind}: its geometry is in its files); "
        f"upload them to POST {API_PREFIX}/models/{rt.name}/predict",
    )


# -- outputs and metadata ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputSpec:
    """One output tensor: a head's probabilities (FP32) or decisions (BOOL), batch × labels.

    Args:
        name: the tensor's name.
        datatype: ``FP32`` or ``BOOL``.
        head: the head it comes from.
        field: the head's result field (``probabilities`` or ``decisions``).
        labels: its labels in order.
        activation: the head's activation.
    """

    name: str
    datatype: str
    head: str
    field: str
    labels: tuple[str, ...]
    activation: str

    def metadata(self) -> dict[str, Any]:
        parameters: dict[str, Any] = {
            "head": self.head,
            "activation": self.activation,
            "labels": ",".join(self.labels),
        }
        return {"name": self.name, "datatype": self.datatype, "shape": [-1, len(self.labels)], "parameters": parameters}


def served_heads(rt: ModelRuntime) -> list[tuple[str, tuple[str, ...], str]]:
    """(name, labels, activation) of each head: the loaded checkpoint's, else the task's declared ones."""
    declared = {h.name: h for h in rt.task.contract.heads}
    if rt.checkpoint is None:
        return [(h.name, tuple(h.labels), h.activation) for h in rt.task.contract.heads]
    default = rt.task.contract.heads[0].name if rt.task.contract.heads else "output"
    return [
        (name, tuple(labels), declared[name].activation if name in declared else "")
        for name, labels in rt.checkpoint.head_labels(default).items()
    ]


def output_specs(rt: ModelRuntime) -> list[OutputSpec]:
    """The model's output tensors (none for a model that takes files).

    A task that declares one head answers ``probabilities`` (and ``decisions`` for a sigmoid head); one that
    declares several answers one output per head, named after it, whichever of them its checkpoint has.
    """
    if rt.task.contract.tensor is None:
        return []
    single = len(rt.task.contract.heads) == 1
    out: list[OutputSpec] = []
    for name, labels, activation in served_heads(rt):
        out.append(OutputSpec("probabilities" if single else name, "FP32", name, "probabilities", labels, activation))
        if activation == "sigmoid":
            decisions = "decisions" if single else f"{name}_decisions"
            out.append(OutputSpec(decisions, "BOOL", name, "decisions", labels, activation))
    return out


def input_metadata(spec: TensorSpec) -> dict[str, Any]:
    """The metadata of a task's input tensor, batched: ``[-1, *shape]`` (an unbatched ``shape`` is one input)."""
    parameters: dict[str, Any] = {
        **spec.parameters,
        "datatypes": ",".join(spec.datatypes),
        "unbatched_shape": json.dumps(list(spec.shape)),
    }
    if spec.required_options:
        parameters["required_parameters"] = ",".join(spec.required_options)
    return {"name": spec.name, "datatype": spec.datatype, "shape": [-1, *spec.shape], "parameters": parameters}


def model_metadata(rt: ModelRuntime) -> dict[str, Any]:
    """``GET /v2/models/{name}``: inputs and outputs with datatypes and shapes (-1 for a variable size)."""
    spec = rt.task.contract.tensor
    parameters: dict[str, Any] = {"title": rt.task.title, "state": rt.state, "kind": rt.task.contract.kind}
    if spec is None:
        parameters["inputs"] = f"files: POST {API_PREFIX}/models/{rt.name}/predict"
    else:
        parameters["options"] = ",".join(rt.task.options_model.model_fields)
    return {
        "name": rt.name,
        "versions": [rt.version] if rt.checkpoint is not None else [],
        "platform": PLATFORM,
        "inputs": [input_metadata(spec)] if spec is not None else [],
        "outputs": [o.metadata() for o in output_specs(rt)],
        "parameters": parameters,
    }


# -- the request -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestedOutput:
    """An output to answer, as JSON data or binary, raw or as the top ``classification`` labels."""

    spec: OutputSpec
    binary: bool
    classification: int | None = None


@dataclass
class TensorRequest:
    """An inference request, checked and decoded.

    Args:
        id: the request's ``id`` (echoed).
        options: task options from the request's and the input's parameters.
        arrays: one array per input of the batch (views of the body where the data is binary).
        refs: how each input is named in messages (``inputs[0][2]``: the third of the batch of the first input).
        outputs: the outputs to answer, in order.
    """

    id: str | None
    options: dict[str, Any]
    arrays: list[np.ndarray]
    refs: list[str]
    outputs: list[RequestedOutput]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parameters(raw: Any, where: str) -> dict[str, Any]:
    """A ``parameters`` object: string, number or boolean values.

    Raises:
        ServiceError: 400 naming ``where``.
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ServiceError(400, f"{where}: parameters must be a JSON object")
    for key, value in raw.items():
        if not isinstance(value, str | int | float | bool):
            raise ServiceError(400, f"{where}: parameter {key!r} must be a string, number or boolean")
    return dict(raw)


def _split(parameters: dict[str, Any], protocol: frozenset[str], options: Sequence[str], where: str) -> dict[str, Any]:
    """The task options among ``parameters``; anything neither a protocol parameter nor an option is refused."""
    unknown = sorted(set(parameters) - protocol - set(options))
    if unknown:
        accepted = ", ".join(sorted({*protocol, *options}))
        raise ServiceError(400, f"{where}: unknown parameter(s) {', '.join(map(repr, unknown))} (accepted: {accepted})")
    return {k: v for k, v in parameters.items() if k in options}


def _body_parts(body: bytes, header: str | None) -> tuple[bytes, memoryview]:
    """The JSON part and the binary part of a body (all JSON without the header); the binary part is not copied."""
    if header is None:
        return body, memoryview(b"")
    try:
        length = int(header)
    except ValueError:
        raise ServiceError(400, f"{HEADER_LENGTH} must be an integer, got {header[:40]!r}") from None
    if not 0 < length <= len(body):
        raise ServiceError(400, f"{HEADER_LENGTH} is {length}, but the body holds {len(body)} bytes")
    return body[:length], memoryview(body)[length:]


def _shape(raw: Any, spec: TensorSpec, where: str) -> tuple[list[int], bool]:
    """The input's shape and whether it is a batch; each dimension positive, the fixed ones as the task's."""
    if not isinstance(raw, list) or not all(_is_int(d) for d in raw):
        raise ServiceError(400, f"{where}: shape must be an array of integers")
    rank = len(spec.shape)
    expected = f"{list(spec.shape)} or, a batch, {[-1, *spec.shape]} (-1: any size)"
    if len(raw) not in (rank, rank + 1):
        raise ServiceError(400, f"{where}: shape {raw} does not fit {expected}")
    batched = len(raw) == rank + 1
    if any(d < 1 for d in raw):
        raise ServiceError(400, f"{where}: shape {raw} has an empty dimension")
    one = raw[1:] if batched else raw
    if any(s != -1 and d != s for d, s in zip(one, spec.shape, strict=True)):
        raise ServiceError(400, f"{where}: shape {raw} does not fit {expected}")
    return list(raw), batched


def _json_data(data: Any, shape: list[int], datatype: str, count: int, where: str) -> np.ndarray:
    """Tensor data given as JSON (flattened row-major or nested as the shape), converted to the datatype.

    Raises:
        ServiceError: 400 for a count that is not the shape's, values that are not numbers, or out of range.
    """
    if not isinstance(data, list):
        raise ServiceError(400, f"{where}: data must be a JSON array")
    flat = not data or not isinstance(data[0], list)
    if flat and len(data) != count:
        raise ServiceError(400, f"{where}: shape {shape} holds {count} elements, data has {len(data)}")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError):
        raise ServiceError(400, f"{where}: data is not an array of the shape {shape} (ragged nesting)") from None
    if arr.dtype.kind not in "iuf":
        raise ServiceError(400, f"{where}: data must hold numbers for datatype {datatype}")
    if arr.size != count or (arr.ndim != 1 and list(arr.shape) != shape):
        raise ServiceError(400, f"{where}: data of shape {list(arr.shape)} does not hold shape {shape}")
    dtype = np.dtype(TENSOR_DTYPES[datatype])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if arr.dtype.kind == "f" and not np.array_equal(arr, np.trunc(arr)):
            raise ServiceError(400, f"{where}: data must hold integers for datatype {datatype}")
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise ServiceError(400, f"{where}: values outside {info.min}..{info.max} for datatype {datatype}")
    with np.errstate(over="ignore", invalid="ignore"):  # beyond FP32: inf, which the task refuses by name
        return arr.astype(dtype).reshape(shape)


def _outputs(raw: Any, specs: list[OutputSpec], binary_default: bool) -> list[RequestedOutput]:
    """The requested outputs (all of them, in the model's order, when the request names none)."""
    by_name = {o.name: o for o in specs}
    if raw is None:
        return [RequestedOutput(o, binary_default) for o in specs]
    if not isinstance(raw, list) or not raw:
        raise ServiceError(400, "outputs must be a non-empty array of {name, parameters}")
    out: list[RequestedOutput] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        where = f"outputs[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ServiceError(400, f"{where}: an output is an object with a name")
        name = entry["name"]
        if name not in by_name:
            known = ", ".join(repr(n) for n in by_name)
            raise ServiceError(400, f"{where}: the model has no output {name[:80]!r} (outputs: {known})")
        if name in seen:
            raise ServiceError(400, f"{where}: output {name!r} is requested twice")
        seen.add(name)
        parameters = _parameters(entry.get("parameters"), where)
        _split(parameters, OUTPUT_PARAMETERS, (), where)
        binary = parameters.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise ServiceError(400, f"{where}: binary_data must be a boolean")
        top = parameters.get("classification")
        spec = by_name[name]
        if top is not None:
            if spec.datatype != "FP32":
                raise ServiceError(400, f"{where}: classification applies to probabilities, not to {name!r}")
            if not _is_int(top) or not 1 <= top <= len(spec.labels):
                raise ServiceError(
                    400, f"{where}: classification must be an integer from 1 to {len(spec.labels)}, got {top!r}"
                )
        out.append(RequestedOutput(spec, binary, top))
    return out


def decode_request(body: bytes, header: str | None, rt: ModelRuntime) -> TensorRequest:
    """Check and decode an inference request for ``rt``: every size is checked against the shape and the
    datatype before an array is made, and binary data is read in place.

    Raises:
        ServiceError: 400 naming the input, output or parameter at fault.
    """
    spec = rt.task.contract.tensor
    if spec is None:
        raise files_only(rt)
    text, binary = _body_parts(body, header)
    try:
        request = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ServiceError(400, f"the body is not a JSON inference request ({type(exc).__name__})") from None
    if not isinstance(request, dict):
        raise ServiceError(400, "the body must be a JSON inference request object")
    rid = request.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ServiceError(400, "id must be a string")
    option_names = tuple(rt.task.options_model.model_fields)
    parameters = _parameters(request.get("parameters"), "parameters")
    options = _split(parameters, REQUEST_PARAMETERS, option_names, "parameters")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise ServiceError(400, "parameters: binary_data_output must be a boolean")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ServiceError(400, f"inputs must be a non-empty array; model {rt.name!r} takes the input {spec.name!r}")
    arrays: list[np.ndarray] = []
    refs: list[str] = []
    offset = 0
    for i, entry in enumerate(inputs):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ServiceError(400, f"inputs[{i}]: an input is an object with a name, shape, datatype and data")
        name = entry["name"]
        where = f"input {name[:80]!r}"
        if name != spec.name:
            raise ServiceError(400, f"{where}: model {rt.name!r} has no such input (its input: {spec.name!r})")
        if arrays:
            raise ServiceError(400, f"{where} is given twice")
        shape, batched = _shape(entry.get("shape"), spec, where)
        datatype = entry.get("datatype")
        if datatype not in spec.datatypes:
            accepted = ", ".join(spec.datatypes)
            raise ServiceError(400, f"{where}: datatype {str(datatype)[:20]!r} is not accepted ({accepted})")
        own = _parameters(entry.get("parameters"), where)
        options.update(_split(own, INPUT_PARAMETERS, option_names, where))
        count = math.prod(shape)
        dtype = np.dtype(TENSOR_DTYPES[datatype])
        size = own.get("binary_data_size")
        if size is not None:
            if "data" in entry:
                raise ServiceError(400, f"{where}: give data or binary_data_size, not both")
            if not _is_int(size) or size != count * dtype.itemsize:
                raise ServiceError(
                    400,
                    f"{where}: binary_data_size is {size!r}, but shape {shape} of {datatype} is "
                    f"{count * dtype.itemsize} bytes",
                )
            if offset + size > len(binary):
                raise ServiceError(400, f"{where}: {size} bytes of binary data declared, {len(binary) - offset} sent")
            array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
            offset += size
        elif "data" in entry:
            if count > len(text):  # every element takes at least a byte of JSON
                raise ServiceError(400, f"{where}: shape {shape} holds {count} elements, more than the body")
            array = _json_data(entry["data"], shape, datatype, count, where)
        else:
            raise ServiceError(400, f"{where}: no data (give data, or binary_data_size and the bytes after the JSON)")
        if batched:
            arrays.extend(array[b] for b in range(shape[0]))
            refs.extend(f"inputs[{i}][{b}]" for b in range(shape[0]))
        else:
            arrays.append(array)
            refs.append(f"inputs[{i}]")
    if offset != len(binary):
        raise ServiceError(400, f"{len(binary) - offset} bytes of binary data after the JSON belong to no input")
    outputs = _outputs(request.get("outputs"), output_specs(rt), binary_default)
    return TensorRequest(rid, options, arrays, refs, outputs)


def request_options(rt: ModelRuntime, values: dict[str, Any]) -> TaskOptions:
    """The served defaults updated by the request's parameters; a required option must be set.

    Raises:
        ServiceError: 400 naming the parameter.
    """
    spec = rt.task.contract.tensor
    try:
        options = rt.default_options.updated(values, "parameters") if values else rt.default_options
    except ConfigError as exc:
        raise ServiceError(400, str(exc)) from None
    missing = [o for o in (spec.required_options if spec else ()) if getattr(options, o, None) is None]
    if missing:
        raise ServiceError(
            400,
            f"model {rt.name!r} needs the parameter(s) {', '.join(map(repr, missing))} with its "
            f"{spec.name if spec else 'input'!r} tensor (in the request's or the input's parameters)",
        )
    return options


# -- inference -------------------------------------------------------------------------------------------------------
async def run(rt: ModelRuntime, request: TensorRequest, settings: Settings, admission: Claim | None) -> list[Outcome]:
    """Predict every input of the request through the model's runtime, answered from memory (no files).

    Each input claims its share of the model's work at once (all or none), taking over the request's admission;
    a full queue for one ends them all.

    Raises:
        ServiceError: 413 for more inputs than a request may hold, 503 (``QueueFullError``) on a full queue.
    """
    options = request_options(rt, request.options)
    limit = min(settings.max_items_per_request, rt.ledger.max_items)
    if len(request.arrays) > limit:
        raise ServiceError(
            413, f"{len(request.arrays)} inputs in one request; the limit is {limit} (send smaller batches)"
        )
    items = [
        ServedItem(
            name=f"input-{i:03d}",
            paths={},
            data=array,
            options=options,
            ref=ref,
            size=int(array.nbytes),
            redact=redact_paths,
        )
        for i, (array, ref) in enumerate(zip(request.arrays, request.refs, strict=True))
    ]
    claims = rt.ledger.claim_each([it.size for it in items], replacing=admission)
    try:
        return await rt.predict_request(items, claims, None, None)  # answered from memory, nothing written
    finally:
        for c in claims:
            c.let_go()  # each input's threads and batch hold it on their own until they return


def check_outcomes(outcomes: list[Outcome]) -> None:
    """A request answers only when every input succeeded (a tensor has no per-input error).

    Raises:
        ServiceError: 400 when the inputs failed for their own reasons, 504 when some timed out, else 500.
    """
    failures = [o for o in outcomes if o.failure]
    if failures:
        raise failure_error(failures)


def _leaves(values: Any) -> dict[str, Any]:
    """Label → value of a result field, its groups (ProtoECGNet's branches) flattened."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_leaves(value))
        else:
            out[key] = value
    return out


def _row(outputs: Mapping[str, Any], spec: OutputSpec, n_heads: int) -> list[Any]:
    """One input's values of an output, in label order, from its result (a single head's fields are top-level)."""
    fields = outputs.get(spec.head) if n_heads > 1 else outputs
    values = fields.get(spec.field) if isinstance(fields, Mapping) else None
    if isinstance(values, Mapping):
        leaves = _leaves(values)
        if all(label in leaves for label in spec.labels):
            return [leaves[label] for label in spec.labels]
    elif isinstance(values, list | tuple | np.ndarray) and len(values) == len(spec.labels):
        return list(values)
    raise ValueError(f"the result has no {spec.field} of head {spec.head!r} for every label")


def _top(row: Sequence[float], labels: Sequence[str], k: int) -> list[str]:
    """Triton's classification strings ``value:index:label`` of the ``k`` highest values."""
    order = sorted(range(len(row)), key=lambda j: (-float(row[j]), j))[:k]
    return [f"{float(row[j]):f}:{j}:{labels[j]}" for j in order]


def _binary(datatype: str, values: list[Any]) -> bytes:
    """Tensor data as the binary extension sends it: little-endian, row-major; BYTES with 4-byte lengths."""
    if datatype == "BYTES":
        encoded = [str(v).encode() for v in values]
        return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    return np.asarray(values, dtype=np.dtype(TENSOR_DTYPES[datatype])).tobytes()


def response(rt: ModelRuntime, request: TensorRequest, outcomes: list[Outcome]) -> Response:
    """The inference response: JSON, followed by the binary tensors that were asked for as binary data."""
    n_heads = len(served_heads(rt))
    results = [o.result.outputs for o in outcomes]
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for wanted in request.outputs:
        spec = wanted.spec
        try:
            rows = [_row(r, spec, n_heads) for r in results]
        except ValueError as exc:
            logger.error("%s: %s", rt.name, exc)
            raise ServiceError(500, "inference failed", "internal") from None
        if wanted.classification is not None:
            datatype, width = "BYTES", wanted.classification
            values: list[Any] = [s for row in rows for s in _top(row, spec.labels, width)]
        else:
            datatype, width = spec.datatype, len(spec.labels)
            cast = bool if datatype == "BOOL" else float
            values = [cast(v) for row in rows for v in row]
        tensor: dict[str, Any] = {"name": spec.name, "datatype": datatype, "shape": [len(rows), width]}
        if wanted.binary:
            blob = _binary(datatype, values)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = values
        outputs.append(tensor)
    body: dict[str, Any] = {"model_name": rt.name, "model_version": rt.version}
    if request.id is not None:
        body["id"] = request.id
    warnings = [f"{ref}: {w}" for ref, r in zip(request.refs, results, strict=True) for w in r.get("warnings") or []]
    if warnings:
        body["parameters"] = {"warnings": "; ".join(warnings)}
    body["outputs"] = outputs
    if not blobs:
        return JSONResponse(body)
    head = json.dumps(body, separators=(",", ":")).encode()
    return Response(
        head + b"".join(blobs),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(head))},
    )
