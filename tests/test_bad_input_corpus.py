"""The bad-upload corpus through every registered task's real readers: ``collect_inputs`` then the predictor's
``prepare`` (an untrained tiny checkpoint on the CPU).

Every corpus file is hostile or broken (empty or random bytes under each accepted suffix, truncated or lying
headers, NaN, huge claimed sizes, data files outside the input's folder, zip bombs and traversal, DICOM without
pixels, absurd WFDB headers...). For every task and file: nothing but :class:`InputError` escapes, the file is
refused (an error from ``collect_inputs`` or ``prepare``), and every message names it. A task with several
channels (brats) gets good files for its other channels (``role=path``) and the bad file as its last one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from medinfer_testlib import CORPUS_SUFFIXES, BadInput, bad_input_corpus

from pipelines.common.errors import InputError
from pipelines.common.task import PredictOptions, Predictor, Task, get_task, list_tasks

TASKS = list_tasks()
CORPUS = bad_input_corpus()
#: task options that let a reader get past "no sampling rate" to the file's content (CSV/NPY signals)
OPTIONS = {"ecg": {"sampling_rate": 100}}
#: (task, file) pairs exercised and prepare calls made, printed at the end (``-s``) for the closing note
TALLY: Counter[str] = Counter()


@dataclass
class Setup:
    task: Task
    predictor: Predictor
    #: for a task with several channels: role → a good file for each (the bad file replaces the last)
    roles: dict[str, Path]


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad_corpus")
    for bad in CORPUS:
        bad.write(root)
    return root


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    print(  # the counts the closing note states
        f"\nbad-input corpus: {len(CORPUS)} files x {len(TASKS)} tasks ({', '.join(TASKS)}) = "
        f"{TALLY['pairs']} pairs exercised; {TALLY['items']} prepare calls; {TALLY['refused']} refusals"
    )


@pytest.fixture(scope="module")
def setups() -> dict[str, Setup]:
    """Each task's setup, built when its first case runs."""
    return {}


def setup_of(name: str, setups: dict[str, Setup], tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """The task's predictor (built once) and, for a multi-channel task, good files for its channels."""
    if name not in setups:
        task = get_task(name)
        options = PredictOptions(device="cpu", task=task.parse_options(OPTIONS.get(name, {})))
        predictor = task.load_predictor(task.untrained_checkpoint("tiny", seed=0), options)
        roles: dict[str, Path] = {}
        if len(task.contract.channels) > 1:
            good = task.example_inputs(tmp_path_factory.mktemp(f"good_{name}"), 1, seed=5)
            (item,) = task.collect_inputs(good).items
            roles = dict(item.paths)
        setups[name] = Setup(task, predictor, roles)
    return setups[name]


def task_args(setup: Setup, path: Path) -> list[str]:
    """What the task is given: the bad file, or good channels plus the bad file (its folder for DICOM) last."""
    if not setup.roles:
        return [str(path)]
    *others, last = setup.roles
    bad = path.parent if path.suffix.lower() == ".dcm" else path
    return [*(f"{role}={setup.roles[role]}" for role in others), f"{last}={bad}"]


def names_it(message: str, path: Path) -> bool:
    """The message names the bad file (or the folder holding it, for a DICOM series read from its folder)."""
    return path.name in message or str(path.parent) in message


@pytest.mark.timeout(60)  # each case takes well under a second; a reader that hangs or swaps fails here
@pytest.mark.parametrize("bad", CORPUS, ids=[b.id for b in CORPUS])
@pytest.mark.parametrize("name", TASKS)
def test_every_task_refuses_the_bad_input_by_name(
    name: str,
    bad: BadInput,
    corpus_root: Path,
    setups: dict[str, Setup],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    setup = setup_of(name, setups, tmp_path_factory)
    path = corpus_root / bad.id / bad.main
    TALLY["pairs"] += 1
    messages: list[str] = []
    try:
        collected = setup.task.collect_inputs(task_args(setup, path))
    except InputError as exc:  # a task may refuse the whole call
        messages.append(str(exc))
    else:
        assert all(isinstance(e, InputError) for e in collected.errors)
        messages += [str(e) for e in collected.errors]
        for item in collected.items:
            TALLY["items"] += 1
            try:
                setup.predictor.prepare(item)
            except InputError as exc:
                messages.append(str(exc))
            else:
                pytest.fail(f"{name} accepted {bad.id} ({bad.main}): a bad input was read as a good one")
    assert messages, f"{name}: {bad.id} was neither grouped nor refused"
    TALLY["refused"] += 1
    for message in messages:
        assert names_it(message, path), f"{name}: {bad.id}: the message does not name the file: {message}"
        assert len(message) < 2000, message


def test_the_corpus_covers_every_suffix_and_task() -> None:
    assert {"brats", "prostate", "breakhis", "ecg"} <= set(TASKS)
    ids = [b.id for b in CORPUS]
    assert len(ids) == len(set(ids))
    for suffix in CORPUS_SUFFIXES:
        tag = suffix.strip(".").replace(".", "-")
        assert {f"empty-{tag}", f"random-{tag}"} <= set(ids), suffix
    assert len(CORPUS) >= 70
