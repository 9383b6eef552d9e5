"""``medinfer``: the command-line face. Commands parse options and call ``pipelines``; nothing task-specific.

Only typer and the task catalog (:mod:`pipelines.common.catalog`: which tasks exist, found without importing one)
are imported here: each command imports what it needs when it runs, so that ``medinfer --help``, ``--version``
and usage errors answer at once, without torch. An unknown task, task flag or option value is refused before the
task loads, with the task's own options models (its torch-free ``options`` module).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core

from pipelines.common.catalog import task_names

#: wall-clock time this module was imported: the process start where the OS does not tell it
_IMPORTED_AT = time.time()

TASK_HELP = f"Task: {', '.join(task_names())}."

app = typer.Typer(
    name="medinfer",
    help=f"Train, evaluate, run and serve published medical-imaging models, one per task: {', '.join(task_names())}. "
    "Research use: not a medical device, not for diagnosis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help: rich's tables cut option names and help with "…" on narrow terminals
    rich_markup_mode=None,
)
logger = logging.getLogger("medinfer")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def process_started_at() -> float:
    """Wall-clock time (``time.time()``) this process started: from ``/proc`` on Linux (10 ms resolution), else
    when this module was imported (which leaves out the interpreter's own start)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            # the command name (field 2) may hold spaces: count from the last ")"; starttime is field 22
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED_AT
    return min(_IMPORTED_AT, time.time() - max(0.0, age))


def _echo_err(msg: str) -> None:
    typer.echo(msg, err=True)


def _usage_error(msg: str) -> typer.Exit:
    _echo_err(f"error: {msg}")
    return typer.Exit(EXIT_USAGE)


def task_options_help(*, train: bool) -> str:
    """The epilog of a command that takes task options: each task's flags, from its options models (which import
    neither torch nor the task)."""
    from pipelines.common.catalog import options_models

    lines = []
    for task in task_names():
        model = options_models(task)[1 if train else 0]
        flags = ", ".join(
            f"--{name.replace('_', '-')}"
            + (f"/--no-{name.replace('_', '-')}" if field.annotation is bool else " VALUE")
            for name, field in model.model_fields.items()
        )
        lines.append(f"  {task}: {flags or 'none'}")
    return (
        "Task options: each task declares its own flags (their types, defaults and help: `medinfer models`); "
        "any option can also be given as --option KEY=VALUE.\n\n\b\n" + "\n".join(lines)
    )


class _TaskOptionsCommand(typer.core.TyperCommand):
    """A command taking task options: its help ends with every task's flags, read when help is asked for (reading
    the options models at import would double the time ``medinfer --help`` takes)."""

    train: bool = False

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self.epilog = task_options_help(train=self.train)
        super().format_help(ctx, formatter)


class _TrainOptionsCommand(_TaskOptionsCommand):
    """``medinfer train``: its help lists every task's training flags."""

    train = True


def _check_task(name: str) -> None:
    """Refuse an unknown task at once, naming the known ones (no task module is imported): the task packages on
    disk and the tasks registered at run time (:func:`pipelines.common.catalog.task_names`)."""
    names = task_names()
    if name in names:
        return
    import difflib

    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise _usage_error(f"unknown task {name!r}{hint} (tasks: {', '.join(names)})")


def _check_task_args(task: str, tokens: list[str], *, train: bool = False) -> list[str]:
    """Refuse an unknown task, an unknown task flag or an invalid value at once, before the task (and torch) is
    imported, with the task's own options models (:func:`pipelines.common.catalog.options_models`); return the
    tokens that are not task flags."""
    _check_task(task)
    from app.task_args import TaskArgsError, parse_task_args
    from pipelines.common.catalog import options_models
    from pipelines.common.config import ConfigError

    model = options_models(task)[1 if train else 0]
    try:
        values, rest = parse_task_args(model, tokens, f"task {task}")
        model.parse(values, f"task {task}")
    except (TaskArgsError, ConfigError) as exc:
        raise _usage_error(str(exc)) from exc
    return rest


def _task(name: str) -> Any:
    from pipelines.common.task import get_task

    _check_task(name)
    try:
        return get_task(name)
    except ValueError as exc:
        raise _usage_error(str(exc)) from exc


def _checkpoint(task_name: str, checkpoint: Path | None) -> Any:
    from pipelines.common.checkpoint import checkpoints_dir, installed_checkpoint, load_checkpoint
    from pipelines.common.errors import CheckpointError

    path = checkpoint or installed_checkpoint(task_name)
    if path is None:
        raise _usage_error(
            f"no checkpoint for task {task_name!r} in {checkpoints_dir()}. Train one with "
            f"`medinfer train {task_name} --data DIR -o RUN --install`, run `medinfer demo` for synthetic "
            "demo checkpoints, or pass --checkpoint FILE_OR_RUN_DIR."
        )
    try:
        return load_checkpoint(path, task=task_name)
    except CheckpointError as exc:
        raise _usage_error(str(exc)) from exc


TASK_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def _task_options(task: Any, tokens: list[str], *, train: bool = False) -> tuple[Any, list[str]]:
    """The task's typed options from its flags among ``tokens``, and the other tokens (positional inputs)."""
    from app.task_args import TaskArgsError, parse_task_args
    from pipelines.common.config import ConfigError

    model = task.train_options_model if train else task.options_model
    try:
        values, rest = parse_task_args(model, tokens, f"task {task.name}")
        options = task.parse_train_options(values) if train else task.parse_options(values)
    except (TaskArgsError, ConfigError) as exc:
        raise _usage_error(str(exc)) from exc
    return options, rest


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"medinfer {version('medinfer')}")
        except PackageNotFoundError:
            typer.echo("medinfer (not installed; version unknown)")
        raise typer.Exit(EXIT_OK)


@app.callback()
def main_callback(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress to stderr.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """medinfer: research tool; not a medical device, not for diagnosis."""
    # library deprecation notices are for developers, not for people running predictions
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command("models")
def models_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List tasks, their input contracts, output heads, options, networks and available checkpoints."""
    from app.task_args import describe_options
    from models import list_models
    from pipelines.common.checkpoint import checkpoints_dir, installed_checkpoint
    from pipelines.common.task import get_task, list_tasks

    rows = []
    for name in list_tasks():
        task = get_task(name)
        info = task.describe()
        info["models"] = list_models(name)
        ckpt = installed_checkpoint(name)
        info["checkpoint"] = str(ckpt) if ckpt else None
        info["option_flags"] = describe_options(task.options_model)
        info["train_option_flags"] = describe_options(task.train_options_model)
        rows.append(info)
    if as_json:
        typer.echo(json.dumps({"checkpoints_dir": str(checkpoints_dir()), "tasks": rows}, indent=2, default=str))
        return
    typer.echo(f"checkpoints: {checkpoints_dir()}")
    for info in rows:
        c = info["contract"]
        typer.echo(f"\n{info['task']}: {info['title']}")
        typer.echo(f"  input:      {c['description']} ({c['kind']})")
        typer.echo(f"  channels:   {', '.join(c['channels'])}")
        typer.echo(f"  formats:    {', '.join(c['formats'])}")
        for head in c["heads"]:
            typer.echo(f"  head {head['name']} ({head['activation']}): {', '.join(head['labels'])}")
        typer.echo(f"  networks:   {', '.join(info['models'])}; presets: {', '.join(info['presets'])}")
        typer.echo(f"  checkpoint: {info['checkpoint'] or 'none installed'}")
        for title, flags in (("predict options", info["option_flags"]), ("train options", info["train_option_flags"])):
            if flags:
                typer.echo(f"  {title}:")
                for f in flags:
                    typer.echo(f"    {f['flag']} ({f['type']}, default {f['default']}): {f['help']}")


@app.command("synth")
def synth_cmd(
    task: Annotated[str, typer.Argument(help=TASK_HELP)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of cases/records/images.")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    dicom: Annotated[bool, typer.Option("--dicom", help="Also write DICOM where the task supports it.")] = False,
    variant: Annotated[
        str | None,
        typer.Option("--variant", help="Dataset variant the task offers."),
    ] = None,
) -> None:
    """Write a synthetic dataset in the task's real on-disk layout."""
    t = _task(task)
    try:
        root = t.synth(out, n=n, seed=seed, dicom=dicom, variant=variant)
    except ValueError as exc:
        raise _usage_error(str(exc)) from exc
    typer.echo(f"wrote synthetic {task} data to {root}")


@app.command("train", context_settings=TASK_ARGS, cls=_TrainOptionsCommand)
def train_cmd(
    ctx: typer.Context,
    task: Annotated[str, typer.Argument(help=TASK_HELP)],
    data: Annotated[Path, typer.Option("--data", help="Dataset root in the real layout.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")],
    preset: Annotated[str, typer.Option("--preset", help="full (published recipe) or tiny.")] = "full",
    config: Annotated[Path | None, typer.Option("--config", help="YAML overriding config fields.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Override the number of epochs.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    install: Annotated[bool, typer.Option("--install", help="Install the best checkpoint for predict/serve.")] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="No progress (else a bar on a terminal, one line per stage and per epoch in logs); errors still "
            "print.",
        ),
    ] = False,
    distributed: Annotated[
        bool,
        typer.Option(
            "--distributed",
            help="Data-parallel training (DDP) under torchrun, one process per GPU (or CPU process): "
            "torchrun --nproc_per_node N -m app.cli train ... --distributed. The batch size is per process; "
            "rank 0 logs, validates and writes the run.",
        ),
    ] = False,
) -> None:
    """Train a model; writes best/last checkpoints, metrics.json, a curve PNG and a model card.

    Progress goes to standard error: stage, epoch, step, running loss, the validation metric, elapsed and estimated
    time left."""
    rest = _check_task_args(task, list(ctx.args), train=True)
    if rest:
        raise _usage_error(f"unexpected argument(s): {' '.join(rest)}")
    if distributed:
        from pipelines.common.distributed import TORCHRUN_ENV, missing_torchrun_env

        missing = missing_torchrun_env()
        if missing:
            raise _usage_error(
                f"--distributed runs under torchrun, which sets {', '.join(TORCHRUN_ENV)} (missing: "
                f"{', '.join(missing)}); start it as: torchrun --nproc_per_node N -m app.cli train {task} ... "
                "--distributed"
            )
    from pipelines.common.checkpoint import install_checkpoint
    from pipelines.common.task import TrainOptions

    t = _task(task)
    task_options, _ = _task_options(t, list(ctx.args), train=True)  # the same flags as checked above
    if not data.exists():
        raise _usage_error(f"{data}: dataset folder does not exist")
    if config is not None and not config.is_file():
        raise _usage_error(f"{config}: config file does not exist")
    opts = TrainOptions(
        data_dir=data,
        out_dir=out,
        preset=preset,
        config_path=config,
        epochs=epochs,
        device=device,
        seed=seed,
        task=task_options,
        quiet=quiet,
    )
    main_process = True
    if distributed:
        from pipelines.common import distributed as dist

        try:
            info = dist.init_distributed(device)
        except ValueError as exc:
            raise _usage_error(str(exc)) from exc
        main_process = info.is_main
        if not main_process:  # rank 0 alone logs (warnings and errors still show on every rank)
            logging.getLogger().setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        run_dir = t.train(opts)
    except ValueError as exc:
        raise _usage_error(str(exc)) from exc
    finally:
        if distributed:
            dist.shutdown()
    if not main_process:
        return
    typer.echo(f"run written to {run_dir}")
    if install:
        dst = install_checkpoint(run_dir, task)
        typer.echo(f"installed {dst}")


@app.command("evaluate", context_settings=TASK_ARGS, cls=_TaskOptionsCommand)
def evaluate_cmd(
    ctx: typer.Context,
    task: Annotated[str, typer.Argument(help=TASK_HELP)],
    data: Annotated[Path, typer.Option("--data", help="Labelled dataset root.")],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Checkpoint file or run folder.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("evaluation"),
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Inputs per forward pass.")] = 32,
) -> None:
    """Evaluate a checkpoint on a labelled dataset: per-case CSV and summary JSON."""
    rest = _check_task_args(task, list(ctx.args))
    if rest:
        raise _usage_error(f"unexpected argument(s): {' '.join(rest)}")
    from pipelines.common.task import PredictOptions

    t = _task(task)
    task_options, _ = _task_options(t, list(ctx.args))  # the same flags as checked above
    ckpt = _checkpoint(task, checkpoint)
    if not data.exists():
        raise _usage_error(f"{data}: dataset folder does not exist")
    options = PredictOptions(device=device, batch_size=batch_size, task=task_options)
    try:
        summary = t.evaluate(data, ckpt, out, options)
    except ValueError as exc:
        raise _usage_error(str(exc)) from exc
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command("predict", context_settings=TASK_ARGS, cls=_TaskOptionsCommand)
def predict_cmd(
    task: Annotated[str, typer.Argument(help=TASK_HELP)],
    inputs: Annotated[list[str], typer.Argument(help="Files, folders, globs, or role=path pairs; and task options.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Checkpoint file or run folder.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")] = "auto",
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Inputs per forward pass (tasks that take one at a time: 1).")
    ] = 1,
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="Mixed precision on CUDA.")] = True,
    explain: Annotated[bool, typer.Option("--explain", help="Write the task's explanation too.")] = False,
    continue_on_error: Annotated[
        bool, typer.Option("--continue-on-error", help="Keep going after a failed input.")
    ] = False,
    prefetch: Annotated[
        int | None,
        typer.Option(
            "--prefetch",
            min=0,
            help="Batches read and preprocessed (in threads) while the current one runs; 0: one step after the "
            "other. Default: the task's own choice (2 unless it says otherwise) on a GPU or where cores are left "
            "beside torch's threads, else 0.",
        ),
    ] = None,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Predict on a Ray cluster (Ray Data): reading in Ray tasks, the model in a pool of Ray actors, "
            "results written here; the same outputs and report. Inputs must be at the same paths on every node. "
            "Needs pip install 'medinfer[distributed]'.",
        ),
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="With --ray: the cluster's head (HOST:6379, or auto). Default: $RAY_ADDRESS, else a local instance.",
        ),
    ] = None,
    num_gpus_per_worker: Annotated[
        float | None,
        typer.Option("--num-gpus-per-worker", min=0, help="With --ray: GPUs each model actor holds (default 0)."),
    ] = None,
    ray_workers: Annotated[
        int | None,
        typer.Option(
            "--ray-workers",
            min=1,
            help="With --ray: model actors (one model load each). Default: the cluster's GPUs over "
            "--num-gpus-per-worker, else 1.",
        ),
    ] = None,
) -> None:
    """Predict on inputs; one result per input plus report.json and report.csv. Exit 1 if any input failed."""
    started_at = process_started_at()
    if not _check_task_args(task, list(inputs)):
        raise _usage_error("no inputs given")
    ray_only = {"--ray-address": ray_address, "--num-gpus-per-worker": num_gpus_per_worker}
    given = [flag for flag, value in {**ray_only, "--ray-workers": ray_workers}.items() if value is not None]
    if given and not ray:
        raise _usage_error(f"{', '.join(given)} only with --ray")
    if ray and prefetch is not None:
        raise _usage_error("--prefetch is the single-process run's; with --ray, Ray streams the batches")
    gpus = num_gpus_per_worker or 0.0
    if ray:
        from pipelines.common.ray_predict import RayUnavailable, require_ray, worker_device

        try:
            require_ray()  # before any model is loaded
            worker_device(device, gpus)
        except (RayUnavailable, ValueError) as exc:
            raise _usage_error(str(exc)) from exc
    from tqdm import tqdm

    from pipelines.common.errors import InputError
    from pipelines.common.predict import run_predictions
    from pipelines.common.task import PredictOptions

    t = _task(task)
    task_options, paths = _task_options(t, list(inputs))  # the same flags as checked above: paths are left
    ckpt = _checkpoint(task, checkpoint)
    # with --ray the model runs in Ray's actors (on ``device``); this process only finishes, on the CPU
    options = PredictOptions(
        device="cpu" if ray else device, batch_size=batch_size, amp=amp, explain=explain, task=task_options
    )
    try:
        collected = t.collect_inputs(paths)
        predictor = t.load_predictor(ckpt, options)
    except (InputError, ValueError) as exc:
        raise _usage_error(str(exc)) from exc
    if not len(collected):
        raise _usage_error("no inputs found")
    with tqdm(total=len(collected), desc=f"predict {task}", unit="input", file=sys.stderr, disable=None) as bar:
        if ray:
            from pipelines.common.ray_predict import pool_sizes, ray_session, run_predictions_ray

            try:
                with ray_session(ray_address) as ray_module:
                    try:
                        pool_sizes(ray_module, gpus, ray_workers)
                    except ValueError as exc:
                        raise _usage_error(str(exc)) from exc
                    report = run_predictions_ray(
                        predictor,
                        collected,
                        out,
                        task=task,
                        continue_on_error=continue_on_error,
                        progress=bar.update,
                        started_at=started_at,
                        device=device,
                        num_gpus_per_worker=gpus,
                        workers=ray_workers,
                    )
            except RayUnavailable as exc:
                raise _usage_error(str(exc)) from exc
        else:
            report = run_predictions(
                predictor,
                collected,
                out,
                task=task,
                continue_on_error=continue_on_error,
                progress=bar.update,
                prefetch=prefetch,
                started_at=started_at,
            )
    if report.startup_s is not None:
        logger.info("first input read %.2f s after the process started", report.startup_s)
    counts = report.to_dict()["counts"]
    typer.echo(
        f"{counts['ok']} ok, {counts['error']} failed, {counts['skipped']} skipped; report: {out / 'report.json'}"
    )
    for r in report.results:
        if r.status == "error":
            _echo_err(f"failed: {r.error}")
    raise typer.Exit(EXIT_OK if report.ok else EXIT_FAILED)


@app.command("serve")
def serve_cmd(
    host: Annotated[str | None, typer.Option("--host", help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default 8000).")] = None,
    checkpoints: Annotated[
        Path | None, typer.Option("--checkpoints", help="Installed checkpoints folder (default $MEDINFER_CHECKPOINTS).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Jobs and results (default $MEDINFER_DATA_DIR).")
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda[:N].")] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow listening beyond loopback without API keys.")
    ] = False,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Serve on Ray Serve: the same app as the ingress, one model deployment per task with its replicas "
            "(MEDINFER_RAY_REPLICAS, MEDINFER_RAY_GPUS_PER_REPLICA...). Needs `pip install 'medinfer[distributed]'`.",
        ),
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="With --ray: the Ray cluster to join (HEAD:6379, or auto); default: RAY_ADDRESS if set, else a "
            "local Ray instance.",
        ),
    ] = None,
) -> None:
    """Serve every task with a checkpoint over HTTP (FastAPI + uvicorn, or Ray Serve with --ray); settings also from
    MEDINFER_* variables."""
    if ray_address is not None and not ray:
        raise _usage_error("--ray-address needs --ray")
    from app.settings import Settings

    overrides: dict[str, Any] = {
        "host": host,
        "port": port,
        "checkpoints": checkpoints,
        "data_dir": data_dir,
        "device": device,
    }
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
        if insecure:
            settings = settings.model_copy(update={"insecure": True})
        settings.check_bind()
        from app.runtime import discover_models

        discover_models(settings)  # an unknown task in MEDINFER_TASKS is a usage error, not a crash at startup
    except ValueError as exc:
        raise _usage_error(str(exc)) from exc
    if not ray:
        _run_server(settings)
        return
    try:
        from app import ray_serve
    except ImportError as exc:
        raise _usage_error(f"--ray needs Ray Serve ({exc}): pip install 'medinfer[distributed]'") from exc
    if ray_address is None and "RAY_ADDRESS" not in os.environ:
        try:
            settings.check_port()  # a local Ray's proxy listens here: say so before the models load
        except ValueError as exc:
            raise _usage_error(str(exc)) from exc
    logging.getLogger("app").setLevel(logging.INFO)
    try:
        ray_serve.serve_forever(settings, address=ray_address, echo=_echo_err)
    except ValueError as exc:
        raise _usage_error(str(exc)) from exc


def _run_server(settings: Any) -> None:
    """Start uvicorn in the foreground with the service app."""
    import uvicorn

    from app.main import create_app

    try:
        settings.check_bind()
        settings.check_port()
    except ValueError as exc:
        raise _usage_error(str(exc)) from exc
    logging.getLogger("app").setLevel(logging.INFO)
    typer.echo(f"serving on http://{settings.host}:{settings.port} (docs at /docs; Ctrl-C to stop)", err=True)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Demo folder.")] = Path("demo_output"),
    tasks: Annotated[list[str] | None, typer.Option("--task", help="Only these tasks (repeatable).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic data and of training.")] = 0,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="End by serving the demo checkpoints.")] = True,
    port: Annotated[int, typer.Option("--port", help="Port of the demo service (on 127.0.0.1).")] = 8000,
    retrain: Annotated[
        bool, typer.Option("--retrain", help="Train the demo models again even when cached ones match.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or progress lines.")] = False,
) -> None:
    """Synthetic data, tiny demo checkpoints (trained once, cached in OUT/checkpoints, apart from yours),
    explained predictions on every input kind, a table of what was written, then the service on 127.0.0.1."""
    names = list(dict.fromkeys(tasks or task_names()))
    for name in names:
        _check_task(name)  # before anything is imported or written
    from app.demo import DEMO_HOST, Demo, output_table, service_lines
    from app.settings import port_problem

    if serve:
        problem = port_problem(DEMO_HOST, port)
        if problem:  # before minutes of training, not after
            raise _usage_error(f"{problem}; stop it, or pass --port N or --no-serve")
    demo = Demo(out, seed=seed, retrain=retrain, quiet=quiet, echo=typer.echo)
    done, examples = demo.run(names)
    typer.echo(f"\nWhat the demo wrote ({out}/; all of it from synthetic data):")
    for line in output_table(done):
        typer.echo(line)
    typer.echo(
        "Demo models are trained on synthetic data and say so (synthetic_demo: true in every result, report and "
        "model listing): not a medical device, not for diagnosis. Your own checkpoints were not touched."
    )
    typer.echo("")
    for line in service_lines(demo.checkpoints, examples, port):
        typer.echo(line)
    if serve:
        from app.settings import Settings

        _run_server(Settings(checkpoints=demo.checkpoints, host=DEMO_HOST, port=port))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
