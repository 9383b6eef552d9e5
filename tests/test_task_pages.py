"""The task pages ``docs/tasks/<task>.md`` agree with the code they document.

One page per registered task (and none for a task that does not exist); every relative link and image resolves,
or is a picture that ``docs/make_pictures.py`` writes from a ``medinfer demo`` run (``docs/img/`` may not exist
until the lead engineer runs it: the name must then be exactly what the script writes); each page shows its task's
two demo pictures and links its data card; every ``medinfer`` command in a code block names a command, flags
(from ``medinfer <command> --help``) and task options (the task's options models) that exist; every curl URL is a
route of the service with the form fields it takes; and each page says it is not a medical device.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
from medinfer_testlib import fenced_blocks
from PIL import Image
from typer.testing import CliRunner

from app.cli import app as cli_app
from app.task_args import describe_options
from pipelines.common.task import get_task, list_tasks

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = DOCS / "tasks"
IMG = DOCS / "img"
CARDS = REPO / "data_cards"
NOT_A_DEVICE = "not a medical device"
#: commands that take a task's options, and which options model holds them
TASK_OPTION_COMMANDS = {"predict": "options_model", "evaluate": "options_model", "train": "train_options_model"}
#: shell control operators: a command ends at any of them
OPERATORS = frozenset({"|", "||", "&", "&&", ";", "(", ")", "$(", "`"})
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


# -- Markdown and shell helpers ------------------------------------------------------------------------------------
def prose(text: str) -> str:
    """The text outside fenced blocks and inline code (where links are links)."""
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def strip_comment(line: str) -> str:
    """A shell line without its comment: from a ``#`` that starts a word outside quotes (as bash reads it)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def shell_lines(block: list[str]) -> list[str]:
    """The lines of a code block with continuation lines joined and comments dropped."""
    return [strip_comment(line) for line in "\n".join(block).replace("\\\n", " ").splitlines()]


def shell_words(line: str) -> list[str] | None:
    """The words and operators of a shell line (``None`` when it is no shell: unbalanced quotes)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;()`")
    lexer.whitespace_split = True
    lexer.commenters = ""  # comments are gone (strip_comment); "#" inside a word (a URL fragment) stays
    try:
        return list(lexer)
    except ValueError:
        return None


def shell_segments(block: list[str]) -> Iterator[list[str]]:
    """The simple commands of a code block, split at control operators (lines that are no shell are left out:
    :func:`unparsed` finds those that mention medinfer or curl)."""
    for line in shell_lines(block):
        segment: list[str] = []
        for token in shell_words(line) or []:
            if token in OPERATORS or set(token) <= set("|&;()`"):
                if segment:
                    yield segment
                segment = []
            else:
                segment.append(token)
        if segment:
            yield segment


def unparsed(text: str) -> list[str]:
    """Code-block lines that mention ``medinfer`` or ``curl`` but do not parse as shell (so go unchecked)."""
    return [
        line
        for block in fenced_blocks(text)
        for line in shell_lines(block)
        if re.search(r"\b(medinfer|curl)\b", line) and shell_words(line) is None
    ]


def _program(segment: list[str], name: str) -> int | None:
    """Where ``name`` (or a path ending in it) runs in a segment, after any ``VAR=value`` assignments."""
    for i, token in enumerate(segment):
        if token == name or token.endswith(f"/{name}"):
            return i
        if not re.match(r"^[A-Za-z_]\w*=", token):
            return None
    return None


# -- the CLI: flags of each command as its help shows them ---------------------------------------------------------
def flags_in_help(text: str) -> set[str]:
    """The flags of the ``Options:`` section of a click help text (``-o, --out <path>``, ``--amp / --no-amp``)."""
    flags: set[str] = set()
    in_options = False
    for line in text.splitlines():
        if line.strip() == "Options:":
            in_options = True
            continue
        if in_options and line and not line.startswith(" "):
            in_options = False  # the next section (the epilog)
        if in_options and re.match(r"^ {2}-", line):
            names = re.split(r"\s{2,}", line.strip())[0]
            flags.update(re.findall(r"(?<![\w<-])--?[A-Za-z][\w-]*", names))
    return flags


def _commands() -> Mapping[str, Any]:
    return typer.main.get_command(cli_app).commands  # type: ignore[attr-defined]


@cache
def help_flags(command: str) -> frozenset[str]:
    """The flags ``medinfer <command> --help`` prints."""
    result = CliRunner().invoke(cli_app, [command, "--help"])
    assert result.exit_code == 0, result.output
    return frozenset(flags_in_help(result.output))


def task_flags(task: str, command: str) -> tuple[frozenset[str], frozenset[str]]:
    """The task's option flags for ``command`` (``--x``, ``--no-x`` for booleans) and their field names."""
    model = getattr(get_task(task), TASK_OPTION_COMMANDS[command])
    rows = describe_options(model)
    return frozenset(f for row in rows for f in row["flag"].split("/")), frozenset(row["name"] for row in rows)


def command_problems(segment: list[str]) -> list[str]:
    """What is wrong with one ``medinfer`` command: an unknown command, task, flag or task option."""
    start = _program(segment, "medinfer")
    if start is None:
        return []
    words = segment[start + 1 :]
    shown = shlex.join(segment[start:])
    if not words or words[0].startswith("-"):
        return []  # `medinfer --help`, `medinfer --version`
    name, args = words[0], words[1:]
    if name not in _commands():
        return [f"{shown!r}: medinfer has no command {name!r} (it has {', '.join(_commands())})"]
    allowed = set(help_flags(name))
    fields: frozenset[str] = frozenset()
    if name in TASK_OPTION_COMMANDS:
        if not args or args[0] not in list_tasks():
            return [f"{shown!r}: name a task right after `medinfer {name}` ({', '.join(list_tasks())})"]
        flags, fields = task_flags(args[0], name)
        allowed |= {*flags, "--option"}
    problems = []
    for i, word in enumerate(args):
        if not re.match(r"^--?[A-Za-z]", word):
            continue
        flag = word.split("=", 1)[0]
        if flag not in allowed:
            problems.append(f"{shown!r}: `medinfer {name}` has no flag {flag} (it has {', '.join(sorted(allowed))})")
        elif flag == "--option":
            pair = word.split("=", 1)[1] if "=" in word else (args[i + 1] if i + 1 < len(args) else "")
            key = pair.split("=", 1)[0].replace("-", "_")
            if key not in fields:
                problems.append(f"{shown!r}: task {args[0]} has no option {key!r} (it has {', '.join(sorted(fields))})")
    return problems


# -- the service: routes and their form fields ---------------------------------------------------------------------
@dataclass(frozen=True)
class Service:
    """The app of ``create_app`` (whose router decides what a request reaches) and, from its OpenAPI document,
    the multipart form fields of each operation: ``(METHOD, template) → fields``."""

    app: Any
    forms: Mapping[tuple[str, str], frozenset[str]]

    def serves(self, method: str, path: str) -> bool:
        """Whether the app's router sends ``method path`` to an endpoint (a full match: path and method)."""
        from starlette.routing import Match

        scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": [], "query_string": b""}
        return any(route.matches(scope)[0] == Match.FULL for route in self.app.routes)

    def form(self, method: str, path: str) -> tuple[str, frozenset[str]] | None:
        """The OpenAPI template of ``method path`` and its form fields (``None`` for a route outside the schema)."""
        for (op_method, template), fields in self.forms.items():
            parts = re.split(r"(\{[^}]+\})", template)
            pattern = "".join(
                (".+" if i == len(parts) - 2 else "[^/]+") if part.startswith("{") else re.escape(part)
                for i, part in enumerate(parts)
            )
            if op_method == method and re.fullmatch(pattern, path):
                return template, fields
        return None


@dataclass(frozen=True)
class Curl:
    shown: str
    method: str
    path: str
    form: tuple[str, ...]


def curl_commands(segment: list[str]) -> list[Curl]:
    """The curl call of one shell segment (its method, URL path and ``-F`` field names), if it is one."""
    start = _program(segment, "curl")
    if start is None:
        return []
    words = segment[start + 1 :]
    method, url, form = "GET", "", []
    i = 0
    while i < len(words):
        word = words[i]
        value = words[i + 1] if i + 1 < len(words) else ""
        if word in ("-F", "--form"):
            form.append(value.split("=", 1)[0])
            method, i = "POST", i + 1
        elif word in ("-d", "--data", "--data-binary", "--data-raw", "-T", "--upload-file"):
            method, i = "POST", i + 1
        elif word in ("-X", "--request"):
            method, i = value.upper(), i + 1
        elif word in ("-H", "--header", "-o", "--output", "-w", "--write-out", "-u", "--user"):
            i += 1
        elif re.match(r"^https?://", word):
            url = word
        i += 1
    return [Curl(shlex.join(segment[start:]), method, urlsplit(url).path, tuple(form))] if url else []


def make_service(tmp: Path) -> Service:
    """``create_app``'s app (not started: no model loads) and the form fields of its OpenAPI operations."""
    from app.main import create_app
    from app.settings import Settings

    app = create_app(Settings(checkpoints=tmp / "ckpt", data_dir=tmp / "data", warmup=False))
    schema = app.openapi()
    forms: dict[tuple[str, str], frozenset[str]] = {}
    for template, operations in schema["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data", {}).get("schema")
            fields = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]["properties"] if body else {}
            forms[(method.upper(), template)] = frozenset(fields)
    return Service(app, forms)


def curl_problems(curl: Curl, service: Service) -> list[str]:
    """A curl call whose method and path the service does not route, or with a form field the route does not take."""
    concrete = re.sub(r"\$\{?\w+\}?", "x", curl.path)  # $JOB, ${JOB}: one path segment
    if not service.serves(curl.method, concrete):
        return [f"{curl.shown!r}: the service has no route {curl.method} {curl.path}"]
    found = service.form(curl.method, concrete)
    if found is None:
        return []
    template, fields = found
    unknown = sorted(set(curl.form) - fields)
    if unknown:
        return [f"{curl.shown!r}: {template} takes no form field(s) {unknown} (it takes {sorted(fields)})"]
    return []


# -- links and the demo's pictures ---------------------------------------------------------------------------------
def _load_make_pictures(path: Path = DOCS / "make_pictures.py") -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_make_pictures", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pictures_written(tmp: Path) -> dict[str, set[str]]:
    """task → the names ``docs/make_pictures.py`` writes into ``docs/img/``, found by running a copy of it (so that
    its ``docs/img`` is under ``tmp``) on a stand-in demo folder: one PNG of each task's role in its report, and a
    training curve."""
    (tmp / "docs").mkdir()
    script = tmp / "docs" / "make_pictures.py"
    script.write_bytes((DOCS / "make_pictures.py").read_bytes())
    module = _load_make_pictures(script)
    demo = tmp / "demo"
    for task, role in module.ROLES.items():
        pred = demo / "predictions" / task
        pred.mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(pred / "a.png")
        report = {"results": [{"files": [{"role": role, "path": "a.png"}]}]}
        (pred / "report.json").write_text(json.dumps(report), encoding="utf-8")
        (demo / "runs" / task).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(demo / "runs" / task / "training_curve.png")
    assert module.main(["--demo", str(demo)]) == 0
    written: dict[str, set[str]] = {task: set() for task in module.ROLES}
    for path in (tmp / "docs" / "img").iterdir():
        task = next((t for t in sorted(written, key=len, reverse=True) if path.name.startswith(f"{t}_")), None)
        assert task is not None, f"docs/make_pictures.py wrote {path.name}, named after no task"
        written[task].add(path.name)
    return written


def links(text: str) -> list[str]:
    """Targets of the Markdown links and images of a text (inline and reference style), code left out."""
    body = prose(text)
    return [*LINK.findall(body), *REFERENCE.findall(body)]


def local_targets(page: Path, text: str) -> list[Path]:
    """The files the page's relative links point at (fragments and queries cut)."""
    out = []
    for target in links(text):
        if SCHEME.match(target) or target.startswith("#"):
            continue
        out.append((page.parent / re.split(r"[#?]", target, maxsplit=1)[0]).resolve())
    return out


def link_problems(page: Path, text: str, pictures: Mapping[str, set[str]]) -> list[str]:
    """Relative links to files that do not exist, unless the file is a picture ``make_pictures.py`` writes."""
    names = {name for task_names in pictures.values() for name in task_names}
    problems = []
    for target in local_targets(page, text):
        if target.exists() or (target.parent == IMG.resolve() and target.name in names):
            continue
        problems.append(f"{page.name}: links to {target}, which does not exist and is no picture of make_pictures.py")
    return problems


def says_not_a_device(text: str) -> bool:
    return NOT_A_DEVICE in " ".join(text.replace("*", "").lower().split())


# -- fixtures --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    return pictures_written(tmp_path_factory.mktemp("pictures"))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Service:
    return make_service(tmp_path_factory.mktemp("service"))


def _page(task: str) -> tuple[Path, str]:
    path = PAGES / f"{task}.md"
    assert path.is_file(), f"task {task} has no page docs/tasks/{task}.md"
    return path, path.read_text(encoding="utf-8")


def _segments(text: str) -> list[list[str]]:
    return [segment for block in fenced_blocks(text) for segment in shell_segments(block)]


# -- the pages -------------------------------------------------------------------------------------------------------
def test_one_page_per_registered_task() -> None:
    pages = {p.stem for p in PAGES.glob("*.md")}
    tasks = set(list_tasks())
    assert tasks <= pages, f"tasks without a page in docs/tasks/: {sorted(tasks - pages)}"
    assert pages <= tasks, f"pages of no registered task in docs/tasks/: {sorted(pages - tasks)}"


@pytest.mark.parametrize("task", list_tasks())
def test_links_resolve_or_name_a_demo_picture(task: str, pictures: dict[str, set[str]]) -> None:
    page, text = _page(task)
    assert links(text), f"{page.name} links nothing"
    problems = link_problems(page, text, pictures)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("task", list_tasks())
def test_page_shows_its_demo_pictures_and_links_its_data_card(task: str, pictures: dict[str, set[str]]) -> None:
    page, text = _page(task)
    assert task in pictures, f"docs/make_pictures.py (ROLES) makes no picture for task {task}"
    shown = {t.name for t in local_targets(page, text) if t.parent == IMG.resolve()}
    missing = pictures[task] - shown
    assert not missing, f"{page.name} does not show {sorted(missing)} (what make_pictures.py writes for {task})"
    assert "medinfer demo" in text, f"{page.name}: say that the pictures come from `medinfer demo`"
    card = (CARDS / get_task(task).data_card).resolve()
    assert card in local_targets(page, text), f"{page.name} does not link its data card data_cards/{card.name}"


@pytest.mark.parametrize("task", list_tasks())
def test_medinfer_commands_use_flags_that_exist(task: str) -> None:
    page, text = _page(task)
    assert not unparsed(text), f"{page.name}: lines that do not parse as shell: {unparsed(text)}"
    segments = _segments(text)
    commands = [s for s in segments if _program(s, "medinfer") is not None]
    names = {s[_program(s, "medinfer") or 0 :][1] for s in commands if len(s) > 1}
    assert {"predict", "train", "evaluate"} <= names, f"{page.name} needs predict, train and evaluate examples"
    problems = [p for s in commands for p in command_problems(s)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("task", list_tasks())
def test_curl_examples_name_routes_of_the_service(task: str, service: Service) -> None:
    page, text = _page(task)
    curls = [c for s in _segments(text) for c in curl_commands(s)]
    paths = {c.path for c in curls}
    for endpoint in ("predict", "explain"):
        assert f"/api/v1/models/{task}/{endpoint}" in paths, f"{page.name} needs a curl example of /{endpoint}"
    problems = [p for c in curls for p in curl_problems(c, service)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("task", list_tasks())
def test_page_says_not_a_medical_device(task: str) -> None:
    page, text = _page(task)
    assert says_not_a_device(text), f"{page.name} must say it is {NOT_A_DEVICE!r}"


# -- the checkers themselves -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", list(_commands()))
def test_help_shows_every_flag_of_a_command(command: str) -> None:
    params = _commands()[command].params
    declared = {o for p in params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")} | {"--help"}
    assert help_flags(command) == declared


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("medinfer predict brats case -o out --no-such-flag", "no flag --no-such-flag"),
        ("medinfer predict ecg rec.hea -o out --tta", "no flag --tta"),  # a brats flag
        ("medinfer train brats --data d -o r --overlay", "no flag --overlay"),  # a predict flag
        ("medinfer evaluate prostate --data d --unlabelled u", "no flag --unlabelled"),  # a train flag
        (".venv/bin/medinfer serve --prot 8000", "no flag --prot"),
        ("medinfer predcit brats case -o out", "no command 'predcit'"),
        ("medinfer predict brain case -o out", "name a task"),
        ("medinfer predict brats case -o out --option labelz=1", "no option 'labelz'"),
        ("cd data && medinfer train ecg --data d -o r -x", "no flag -x"),
    ],
)
def test_the_command_checker_finds_problems(line: str, problem: str) -> None:
    problems = [p for s in _segments(f"```bash\n{line}\n```") for p in command_problems(s)]
    assert any(problem in p for p in problems), problems


def test_the_command_checker_accepts_commands_that_exist() -> None:
    text = (
        "```bash\n"
        "MEDINFER_CHECKPOINTS=runs medinfer predict brats case -o out --overlay --no-tta --labels=brats2023 \\\n"
        "  --option sw_batch_size=2 --device cpu --explain  # a comment --not-a-flag\n"
        "medinfer train breakhis --data d -o r --preset tiny --target subtype -q\n"
        "medinfer evaluate ecg --data d --checkpoint r --sampling-rate 500 | tee log\n"
        "medinfer --version\n"
        "```"
    )
    segments = _segments(text)
    assert sum(_program(s, "medinfer") is not None for s in segments) == 4
    assert [p for s in segments for p in command_problems(s)] == []


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("curl -s -F files=@a.png http://127.0.0.1:8000/api/v1/models/brats/predikt", "no route POST"),
        ("curl -s http://127.0.0.1:8000/api/v1/models/brats/predict", "no route GET"),  # no upload: a GET
        ("curl -s -F files=@a.png -F option={} http://h:8000/api/v1/models/ecg/predict", "no form field(s) ['option']"),
        ("curl -s -X DELETE http://h/api/v1/jobs/$JOB", "no route DELETE"),
    ],
)
def test_the_curl_checker_finds_problems(line: str, problem: str, service: Service) -> None:
    curls = [c for s in _segments(f"```bash\n{line}\n```") for c in curl_commands(s)]
    assert curls
    problems = [p for c in curls for p in curl_problems(c, service)]
    assert any(problem in p for p in problems), problems


def test_the_curl_checker_accepts_routes_that_exist(service: Service) -> None:
    text = (
        "```bash\n"
        "(cd case && zip -qr - .) | curl -s -F 'files=@-;filename=case.zip' -F 'options={\"overlay\": true}' \\\n"
        "  'http://127.0.0.1:8000/api/v1/models/brats/explain?save=true'\n"
        "JOB=$(curl -s -F task=ecg -F explain=true -F files=@a.hea http://127.0.0.1:8000/api/v1/jobs | jq -r .id)\n"
        'curl -s -H "Authorization: Bearer $KEY" http://127.0.0.1:8000/api/v1/jobs/${JOB}/files/input-000.json\n'
        "```"
    )
    curls = [c for s in _segments(text) for c in curl_commands(s)]
    assert [c.path for c in curls] == [
        "/api/v1/models/brats/explain",
        "/api/v1/jobs",
        "/api/v1/jobs/${JOB}/files/input-000.json",
    ]
    assert [p for c in curls for p in curl_problems(c, service)] == []


def test_shell_reading_follows_bash_comments_and_reports_lines_it_cannot_read() -> None:
    assert strip_comment("medinfer models  # it's --not-a-flag") == "medinfer models  "
    assert strip_comment("curl 'http://h/a#b' http://h/c#d") == "curl 'http://h/a#b' http://h/c#d"
    assert strip_comment('echo "# not a comment" # a comment') == 'echo "# not a comment" '
    text = "```bash\n# the paper's step\nmedinfer predict brats 'case -o out\necho 'fine'\n```"
    assert unparsed(text) == ["medinfer predict brats 'case -o out"]


def test_the_link_checker_accepts_demo_pictures_and_refuses_other_names(pictures: dict[str, set[str]]) -> None:
    page = PAGES / "brats.md"
    good = (
        "![overlay](../img/brats_overlay.png) [card](../../data_cards/brats.md) [web](https://example.org) "
        "[here](#outputs) `[code](nowhere.md)`\n```\n[block](nowhere.md)\n```\n"
    )
    assert link_problems(page, good, pictures) == []
    bad = "![zones](../img/brats_zonemap.png) [x](missing.md)\n[ref]: ../missing-too.md\n"
    problems = link_problems(page, bad, pictures)
    assert len(problems) == 3, problems
    assert "brats_zonemap.png" in problems[0]


def test_make_pictures_writes_one_role_picture_and_one_curve_per_task(pictures: dict[str, set[str]]) -> None:
    roles = _load_make_pictures().ROLES
    assert pictures == {t: {f"{t}_{role}.png", f"{t}_training_curve.png"} for t, role in roles.items()}


def test_not_a_device_is_found_across_lines_and_emphasis() -> None:
    assert says_not_a_device("Research use only: **not a medical\ndevice**; not for diagnosis.")
    assert not says_not_a_device("A medical device it is not.")
