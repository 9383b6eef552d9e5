"""The README's commands, checked without running them.

The block whose first line is ``# runnable: from a fresh clone, in order`` must work as written, in order, from a
fresh clone: every command parses with the real CLI (options and task flags that exist), every path a command
reads (``--data``, ``--checkpoint``, ``--transfer-from``, inputs) is made by an earlier command of the block, and
everything the block writes (``-o`` folders, ``--install``'s checkpoints folder) is ignored by git. Every curl
example anywhere in the README names a route of the service, with the form fields that route takes, and uploads
files the runnable block made.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import typer
from medinfer_testlib import fenced_blocks

from app.cli import app as cli_app
from app.task_args import parse_task_args
from pipelines.common.task import get_task

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RUNNABLE = "# runnable: from a fresh clone, in order"
#: commands of the runnable block that are not medinfer's, and the folders they make
SETUP_COMMANDS = {"make install": [".venv"], "source .venv/bin/activate": []}
#: options whose value is a path the command reads
READ_OPTIONS = ("data", "checkpoint", "config", "transfer_from", "unlabelled", "init_weights")
KEY_HEADER = "Authorization: Bearer $KEY"
CHECKPOINTS_EXPORT = re.compile(r"^export MEDINFER_CHECKPOINTS=\$PWD/(\S+)$")
ROLE = re.compile(r"^\w+=")


def shell_lines(block: list[str]) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = "\n".join(block).replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(shlex.join(words) if not line.lstrip().startswith("export") else line.split(" #")[0].strip())
    return out


def runnable_blocks(text: str) -> list[list[str]]:
    return [b for b in fenced_blocks(text) if b and b[0].strip() == RUNNABLE]


@dataclass
class Parsed:
    """One medinfer command: its subcommand, the paths it reads and the folders it writes."""

    line: str
    command: str
    params: dict[str, Any]
    reads: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    installs: bool = False


def parse_medinfer(line: str) -> Parsed:
    """Parse a ``medinfer ...`` line as the CLI would, without running it.

    Raises:
        typer.TyperException (click's usage errors), ValueError: an option or task flag the CLI does not take.
    """
    words = shlex.split(line)
    assert words[0] == "medinfer", line
    group = typer.main.get_command(cli_app)
    name, args = words[1], words[2:]
    command = group.commands[name]  # type: ignore[attr-defined]
    with typer.Context(group, info_name="medinfer") as parent:
        ctx = command.make_context(name, list(args), parent=parent)
    params = dict(ctx.params)
    parsed = Parsed(line, name, params)
    extra = list(ctx.args)
    if name == "predict":
        extra = list(params["inputs"])
    if name in ("train", "evaluate", "predict"):
        task = get_task(params["task"])
        model = task.train_options_model if name == "train" else task.options_model
        values, rest = parse_task_args(model, extra, f"task {task.name}")
        if name != "predict" and rest:
            raise ValueError(f"unexpected argument(s) {rest}")
        params.update(values)
        if name == "predict":  # a role=path pair (t1=case_t1.nii.gz) reads its path
            parsed.reads += [r.split("=", 1)[1] if ROLE.match(r) else r for r in rest]
    for option in READ_OPTIONS:
        if params.get(option) is not None:
            parsed.reads.append(str(params[option]))
    if params.get("out") is not None:
        parsed.writes.append(str(params["out"]))
    parsed.installs = bool(params.get("install"))
    return parsed


def _within(path: str, folder: str) -> bool:
    p, f = PurePosixPath(path), PurePosixPath(folder)
    return p == f or f in p.parents


def check_block(lines: list[str]) -> tuple[list[Parsed], list[str]]:
    """The block's medinfer commands and every problem of order, known commands and installs."""
    made: list[str] = []
    problems: list[str] = []
    parsed: list[Parsed] = []
    checkpoints_folder: str | None = None
    for line in lines:
        if line in SETUP_COMMANDS:
            made += SETUP_COMMANDS[line]
            continue
        export = CHECKPOINTS_EXPORT.match(line)
        if export:
            checkpoints_folder = export.group(1)
            continue
        if not line.startswith("medinfer "):
            problems.append(f"{line!r}: not a medinfer command nor a known set-up step ({', '.join(SETUP_COMMANDS)})")
            continue
        try:
            cmd = parse_medinfer(line)
        except (typer.TyperException, ValueError) as exc:
            problems.append(f"{line!r}: the CLI refuses it: {exc}")
            continue
        for path in cmd.reads:
            if PurePosixPath(path).is_absolute() or not any(_within(path, m) for m in made):
                problems.append(f"{line!r} reads {path}, which no earlier command of the block makes")
        if cmd.installs:
            if checkpoints_folder is None:
                problems.append(
                    f"{line!r}: --install before `export MEDINFER_CHECKPOINTS=$PWD/...` would write into "
                    "the user's own checkpoints folder"
                )
            else:
                cmd.writes.append(checkpoints_folder)
        made += cmd.writes
        parsed.append(cmd)
    return parsed, problems


def _readme_block() -> list[str]:
    blocks = runnable_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) == 1, f"README.md needs one fenced block whose first line is {RUNNABLE!r}"
    return shell_lines(blocks[0])


# -- the runnable block ------------------------------------------------------------------------------------------
def test_runnable_block_runs_in_order_with_the_real_cli() -> None:
    parsed, problems = check_block(_readme_block())
    assert not problems, "\n".join(problems)
    commands = {p.command for p in parsed}
    assert {"synth", "train", "predict", "evaluate"} <= commands
    # every task is trained, predicted and evaluated
    for step in ("train", "predict", "evaluate"):
        tasks = {p.params["task"] for p in parsed if p.command == step}
        assert tasks == {"brats", "prostate", "breakhis", "ecg"}, (step, tasks)


def not_ignored(paths: list[str]) -> list[str]:
    """The paths (relative to the repository) that git would not ignore."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.fail("git and the repository's .git are needed to check .gitignore")
    result = subprocess.run(
        ["git", "-C", str(REPO), "check-ignore", "--no-index", "--stdin"],
        input="\n".join(paths),
        capture_output=True,
        text=True,
        check=False,
    )
    ignored = set(result.stdout.split())
    return [p for p in paths if p not in ignored]


def test_everything_the_block_writes_is_ignored_by_git() -> None:
    parsed, _ = check_block(_readme_block())
    written = sorted({w for p in parsed for w in p.writes})
    assert written
    # a file inside each folder: a folder pattern ("runs/") matches it whether or not the folder exists yet
    probes = [f"{w}/probe" for w in written] + [o for c in _readme_curls() for o in c.outputs]
    missing = not_ignored(probes)
    assert not missing, f"not git-ignored (add them to .gitignore): {missing}"


def test_the_ignore_check_sees_what_git_keeps() -> None:
    assert not_ignored(["runs/x/probe", "pipelines/probe.py", "data/brats/probe"]) == ["pipelines/probe.py"]


def _medinfer_lines(text: str) -> list[str]:
    """Every medinfer command in any block, without leading VAR=value assignments or a trailing ``&``."""
    out = []
    for block in fenced_blocks(text):
        for line in shell_lines(block):
            words = shlex.split(line)
            while words and re.match(r"^[A-Z_]+=", words[0]):
                words = words[1:]
            if words and words[-1] == "&":
                words = words[:-1]
            if words and words[0] == "medinfer":
                out.append(shlex.join(words))
    return out


def test_every_medinfer_command_in_the_readme_parses_with_the_real_cli() -> None:
    lines = _medinfer_lines(README.read_text(encoding="utf-8"))
    assert any(line.startswith("medinfer serve") for line in lines)
    problems = []
    for line in lines:
        try:
            parse_medinfer(line)
        except (typer.TyperException, ValueError) as exc:
            problems.append(f"{line!r}: {exc}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        (["medinfer train brats --data data/brats -o runs/brats"], "reads data/brats, which no earlier command"),
        (
            ["medinfer synth brats -o data/brats", "medinfer predict brats data/other/case -o out --checkpoint runs/x"],
            "reads data/other/case",
        ),
        (["medinfer synth brats -o data/brats --no-such-flag"], "the CLI refuses it"),
        (["medinfer synth brats -o d", "medinfer predict brats d -o o --no-such-task-flag"], "unknown option"),
        (["medinfer synth brats -o d", "medinfer train brats --data d -o r --install"], "--install before"),
        (["rm -rf data"], "not a medinfer command"),
        (["medinfer synth brats -o d", "medinfer train brats --data /abs/d -o r"], "reads /abs/d"),
    ],
)
def test_the_checker_finds_problems(block: list[str], problem: str) -> None:
    _, problems = check_block(block)
    assert any(problem in p for p in problems), problems


def test_the_checker_accepts_paths_made_earlier() -> None:
    block = [
        "make install",
        "source .venv/bin/activate",
        "export MEDINFER_CHECKPOINTS=$PWD/runs/checkpoints",
        "medinfer synth brats -o data/brats",
        "medinfer train brats --data data/brats -o runs/brats --preset tiny --install",
        "medinfer predict brats data/brats/BraTS20_Training_00001 -o out/brats --checkpoint runs/brats --overlay",
    ]
    parsed, problems = check_block(block)
    assert not problems
    assert [w for p in parsed for w in p.writes] == ["data/brats", "runs/brats", "runs/checkpoints", "out/brats"]
    assert "overlay" in parsed[-1].params  # a task flag, parsed by the task's options model


# -- curl examples -----------------------------------------------------------------------------------------------
@dataclass
class Curl:
    line: str
    method: str
    path: str
    form: list[str]
    uploads: list[str]
    headers: list[str]
    outputs: list[str]


def curl_commands(line: str) -> list[Curl]:
    """Every curl invocation in a shell line (also inside ``$(...)`` and before a pipe)."""
    words = shlex.split(line)
    out: list[Curl] = []
    i = 0
    while i < len(words):
        if words[i] not in ("curl", "$(curl") and not words[i].endswith("=$(curl"):
            i += 1
            continue
        method, url, form, uploads, headers, outputs = "GET", "", [], [], [], []
        i += 1
        while i < len(words) and words[i] not in ("|", "&&", ";", "||"):
            word = words[i]
            if word in ("-F", "--form"):
                name, _, value = words[i + 1].partition("=")
                form.append(name)
                if value.startswith("@") and value != "@-":
                    uploads.append(value[1:].split(";", 1)[0])
                method = "POST"
                i += 1
            elif word in ("-H", "--header"):
                headers.append(words[i + 1])
                i += 1
            elif word in ("-d", "--data", "--data-binary"):
                method = "POST"
                i += 1
            elif word in ("-X", "--request"):
                method = words[i + 1]
                i += 1
            elif word in ("-o", "--output"):
                outputs.append(words[i + 1])
                i += 1
            elif word.startswith("http"):
                url = word.rstrip(")")
            i += 1
        path = re.sub(r"^https?://[^/]+", "", url).split("?", 1)[0]
        out.append(Curl(line, method, path, form, uploads, headers, outputs))
    return out


def _readme_curls() -> list[Curl]:
    curls = []
    for block in fenced_blocks(README.read_text(encoding="utf-8")):
        for line in shell_lines(block):
            curls += curl_commands(line)
    return curls


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    form: frozenset[str]

    def matches(self, method: str, path: str) -> bool:
        pattern = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(self.template))
        # shell variables ($JOB, ${CASE}) stand for one path segment
        concrete = re.sub(r"\$\{?\w+\}?", "x", path)
        return method.lower() == self.method and re.fullmatch(pattern, concrete) is not None


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> list[Route]:
    """Every route of the service from its OpenAPI document, with the multipart form fields it takes."""
    from app.main import create_app
    from app.settings import Settings

    tmp_path = tmp_path_factory.mktemp("service")
    service = create_app(Settings(checkpoints=tmp_path / "ckpt", data_dir=tmp_path / "data", warmup=False))
    schema = service.openapi()
    routes = []
    for template, operations in schema["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data", {}).get("schema")
            fields: frozenset[str] = frozenset()
            if body is not None:
                name = body["$ref"].rsplit("/", 1)[1]
                fields = frozenset(schema["components"]["schemas"][name]["properties"])
            routes.append(Route(method, template, fields))
    return routes


def _route_for(routes: list[Route], method: str, path: str) -> Route | None:
    return next((r for r in routes if r.matches(method, path)), None)


def test_readme_has_curl_examples_for_every_task_and_the_jobs_flow() -> None:
    paths = [c.path for c in _readme_curls()]
    for task in ("prostate", "breakhis", "ecg"):
        assert any(p.startswith(f"/api/v1/models/{task}/") for p in paths), task
    assert "/api/v1/jobs" in paths  # submit (brats)
    assert "/api/v1/jobs/$JOB" in paths  # poll
    assert "/api/v1/jobs/$JOB/result" in paths  # fetch
    assert any(p.startswith("/api/v1/jobs/$JOB/files/") for p in paths)
    assert any("task" in c.form and c.path == "/api/v1/jobs" for c in _readme_curls())


def curl_problems(curls: list[Curl], routes: list[Route], made: list[str]) -> list[str]:
    """What is wrong with curl examples: no such route, a form field the route does not take, an upload no
    command made, an API route called without the key header."""
    problems = []
    for curl in curls:
        route = _route_for(routes, curl.method, curl.path)
        if route is None:
            problems.append(f"{curl.line!r}: no route {curl.method} {curl.path}")
            continue
        unknown = set(curl.form) - route.form
        if unknown:
            problems.append(f"{curl.line!r}: {route.template} takes no form field(s) {sorted(unknown)}")
        for upload in curl.uploads:
            concrete = re.sub(r"\$\{(\w+)\}", lambda m: _shell_value(m.group(1)), upload)
            if not any(_within(concrete, m) for m in made):
                problems.append(f"{curl.line!r} uploads {upload}, which no command of the runnable block makes")
        for output in curl.outputs:
            folder = str(PurePosixPath(output).parent)
            if not any(_within(m, folder) or _within(folder, m) for m in made):
                problems.append(f"{curl.line!r} writes {output} into a folder no command of the runnable block makes")
        if curl.path.startswith(("/api/v1", "/v2")) and KEY_HEADER not in curl.headers:
            problems.append(f"{curl.line!r}: no {KEY_HEADER!r} header (app/security.py's scheme)")
    return problems


def test_every_curl_example_names_a_route_and_its_fields(routes: list[Route]) -> None:
    parsed, _ = check_block(_readme_block())
    curls = _readme_curls()
    assert curls
    problems = curl_problems(curls, routes, [w for p in parsed for w in p.writes])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("curl -s -H 'Authorization: Bearer $KEY' http://127.0.0.1:8000/api/v1/model", "no route GET"),
        ("curl -s -H 'Authorization: Bearer $KEY' -F x=1 http://h/api/v1/models/ecg/predict", "no form field(s) ['x']"),
        (
            "curl -s -H 'Authorization: Bearer $KEY' -F files=@elsewhere/a.png http://h/api/v1/models/ecg/predict",
            "uploads elsewhere/a.png",
        ),
        ("curl -s http://127.0.0.1:8000/api/v1/models", "no 'Authorization: Bearer $KEY' header"),
        ("curl -s -X DELETE -H 'Authorization: Bearer $KEY' http://h/api/v1/jobs/$JOB", "no route DELETE"),
        ("curl -s -o nowhere/x.nii.gz -H 'Authorization: Bearer $KEY' http://h/api/v1/jobs/$JOB", "writes nowhere/x"),
    ],
)
def test_the_curl_checker_finds_problems(line: str, problem: str, routes: list[Route]) -> None:
    problems = curl_problems(curl_commands(line), routes, ["data"])
    assert any(problem in p for p in problems), problems


def _shell_value(name: str) -> str:
    """The value a README block assigns to a shell variable (``CASE=...``)."""
    for block in fenced_blocks(README.read_text(encoding="utf-8")):
        for line in shell_lines(block):
            if line.startswith(f"{name}="):
                return line.split("=", 1)[1]
    raise AssertionError(f"README.md uses ${{{name}}} but never sets it")
