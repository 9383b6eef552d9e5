"""Find the dataset cards in ``data_cards/``, from a source checkout or from an installed wheel.

A source checkout keeps the cards in the top-level ``data_cards/`` folder next to the packages. A wheel
ships them as data files (pyproject's ``[tool.setuptools.data-files]``), which pip installs under
``<prefix>/share/medinfer/data_cards`` for whichever prefix it installed into: the environment's
(``sysconfig.get_path("data")``), the user scheme's (``pip install --user``) or an explicit
``pip install --prefix``. The last is found from where this module itself was installed.
"""

from __future__ import annotations

import logging
import sysconfig
from pathlib import Path

logger = logging.getLogger(__name__)

#: Where the wheel's data files put the cards, relative to an installation prefix.
CARDS_SUBDIR = Path("share", "medinfer", "data_cards")

_SITE_DIRS = {"site-packages", "dist-packages"}
_LIB_DIRS = {"lib", "lib64"}


def _source_cards_dir() -> Path:
    # pipelines/common/cards.py -> the folder that holds the packages (the repository root).
    return Path(__file__).resolve().parents[2] / "data_cards"


def _installed_prefix() -> Path | None:
    """The prefix this module was installed under, or ``None`` when it is not in a site-packages folder.

    ``<prefix>/lib/pythonX.Y/site-packages/pipelines/common/cards.py`` (POSIX),
    ``<prefix>/Lib/site-packages/...`` (Windows) and ``<prefix>/lib/python3/dist-packages/...`` (Debian)
    all give ``<prefix>``.
    """
    parents = Path(__file__).resolve().parents
    for i, parent in enumerate(parents):
        if parent.name in _SITE_DIRS:
            for above in parents[i + 1 :]:
                if above.name.lower() in _LIB_DIRS:
                    return above.parent
            return None
    return None


def _user_data_dir() -> Path | None:
    try:
        scheme = sysconfig.get_preferred_scheme("user")
        return Path(sysconfig.get_path("data", scheme))
    except (KeyError, ValueError, OSError):
        # Interpreters built without a user scheme (some embedded or locked-down builds).
        return None


def data_cards_dirs() -> list[Path]:
    """The existing folders that may hold data cards, in the order they are searched.

    1. the source checkout's ``data_cards/`` next to the packages;
    2. ``<prefix>/share/medinfer/data_cards`` for the prefix this package is installed under;
    3. the same under the running environment's data path (``sysconfig.get_path("data")``,
       i.e. ``sys.prefix`` in a virtual environment);
    4. the same under the user scheme's data path (``pip install --user``).

    Returns:
        The folders among these that exist, without duplicates.
    """
    candidates: list[Path] = [_source_cards_dir()]
    prefix = _installed_prefix()
    if prefix is not None:
        candidates.append(prefix / CARDS_SUBDIR)
    candidates.append(Path(sysconfig.get_path("data")) / CARDS_SUBDIR)
    user = _user_data_dir()
    if user is not None:
        candidates.append(user / CARDS_SUBDIR)

    found: list[Path] = []
    for candidate in candidates:
        if candidate.is_dir() and candidate.resolve() not in {f.resolve() for f in found}:
            found.append(candidate)
    return found


def _is_card_name(name: str) -> bool:
    # A bare "<stem>.md": no folders, no "..", no absolute path, no drive, no backslashes.
    return (
        bool(name)
        and Path(name).name == name
        and "/" not in name
        and "\\" not in name
        and name not in {".", ".."}
        and name.endswith(".md")
        and name != ".md"
    )


def data_card_path(name: str) -> Path | None:
    """The first existing data card called ``name`` in :func:`data_cards_dirs`.

    Args:
        name: a bare card file name such as ``"brats.md"``; anything with a folder part
            (``"x/brats.md"``, ``"../README.md"``, ``"/etc/passwd"``) or without the ``.md`` suffix is refused.

    Returns:
        The card's path, or ``None`` when the name is refused or no folder holds that card.
    """
    if not _is_card_name(name):
        logger.debug("refused data card name %r", name)
        return None
    for folder in data_cards_dirs():
        path = folder / name
        if path.is_file():
            return path
    return None


def read_data_card(name: str) -> str | None:
    """The text of the data card called ``name``.

    Args:
        name: a bare card file name such as ``"brats.md"`` (see :func:`data_card_path`).

    Returns:
        The card's Markdown text, or ``None`` when the name is refused, the card is missing or unreadable.
    """
    path = data_card_path(name)
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        logger.warning("could not read data card %s: %s", path, err)
        return None


def card_sections(text: str) -> list[str]:
    """The titles of a Markdown card's ``## `` sections, in order (fenced code blocks are skipped).

    Args:
        text: the card's Markdown.

    Returns:
        Each level-2 heading's text, without the ``## `` and surrounding blanks.
    """
    sections: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("## "):
            sections.append(line[3:].strip())
    return sections


def card_title(text: str) -> str | None:
    """The dataset a data card describes, from its ``# Data card: <name>`` title line.

    Args:
        text: the card's Markdown.

    Returns:
        ``<name>`` as written, or ``None`` when the first level-1 heading is not a data card title.
    """
    for line in text.splitlines():
        if line.startswith("# "):
            title = line[2:].strip()
            prefix = "Data card:"
            if not title.startswith(prefix):
                return None
            return title[len(prefix) :].strip() or None
    return None


def dataset_name(card: str) -> str:
    """The short name of the dataset a data card describes (``ptbxl.md`` → ``PTB-XL``).

    The card's title up to its first parenthesis or comma (``PTB-XL (12-lead ECG)`` → ``PTB-XL``); the card's
    file name without ``.md`` when the card is missing or has no data card title.

    Args:
        card: a bare card file name such as ``"ptbxl.md"``.
    """
    text = read_data_card(card)
    title = card_title(text) if text is not None else None
    if title is None:
        return card.removesuffix(".md")
    for stop in (" (", ","):
        title = title.split(stop, 1)[0]
    return title.strip() or card.removesuffix(".md")
