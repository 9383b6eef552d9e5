"""Documentation that must agree with the code: data cards, model cards and the README's settings table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app import settings as settings_module
from app.settings import (
    FACTORY_DEFAULTS,
    TABLE_BEGIN,
    TABLE_END,
    Settings,
    replace_settings_table,
    settings_markdown_table,
)
from pipelines.common.cards import card_sections, card_title, data_card_path, dataset_name
from pipelines.common.modelcard import MODEL_CARD_SECTIONS, SYNTHETIC_CARD, write_model_card
from pipelines.common.task import get_task, list_tasks

REPO = Path(__file__).resolve().parents[1]
CARDS = REPO / "data_cards"
README = REPO / "README.md"
#: the pages that show the generated settings table
SETTINGS_PAGES = ("README.md", "docs/service.md")
#: the cards issue 12 asks for; any other card in data_cards/ is checked the same way
REQUIRED_CARDS = ("brats.md", "prostate.md", "breakhis.md", "ptbxl.md", "synthetic.md")


def _template_sections() -> list[str]:
    return card_sections((CARDS / "TEMPLATE.md").read_text(encoding="utf-8"))


def _cards() -> list[str]:
    return sorted(p.name for p in CARDS.glob("*.md") if p.name != "TEMPLATE.md")


def _in_order(wanted: list[str], have: list[str]) -> list[str]:
    """The sections of ``wanted`` missing from ``have``, or out of order (``have`` may hold more)."""
    rest = iter(have)
    return [s for s in wanted if s not in rest]


# -- data cards ----------------------------------------------------------------------------------------------------
def test_the_required_cards_exist() -> None:
    assert set(REQUIRED_CARDS) <= set(_cards())
    assert len(_template_sections()) >= 10


@pytest.mark.parametrize("card", _cards())
def test_every_card_has_the_template_sections_in_order(card: str) -> None:
    sections = card_sections((CARDS / card).read_text(encoding="utf-8"))
    missing = _in_order(_template_sections(), sections)
    assert not missing, f"data_cards/{card}: sections missing or out of order (see TEMPLATE.md): {missing}"
    repeated = sorted({s for s in sections if sections.count(s) > 1})
    assert not repeated, f"data_cards/{card}: sections repeated: {repeated}"
    assert card_title((CARDS / card).read_text(encoding="utf-8")), f"data_cards/{card}: no '# Data card: ' title"


@pytest.mark.parametrize("task", list_tasks())
def test_every_task_points_at_a_card_that_exists(task: str) -> None:
    card = get_task(task).data_card
    assert card, f"task {task} names no data card"
    path = data_card_path(card)
    assert path is not None, f"task {task} points at data_cards/{card}, which does not exist"
    assert path.parent == CARDS
    assert card in _cards()  # so the template test above covers it


def test_synthetic_card_has_a_section_per_task() -> None:
    sections = card_sections((CARDS / SYNTHETIC_CARD).read_text(encoding="utf-8"))
    first_words = [s.split()[0] for s in sections]
    for task in list_tasks():
        assert first_words.count(task) == 1, f"data_cards/synthetic.md needs one '## {task} (...)' section"
        # it sits after the template's sections, so the per-task text never splits them
        assert first_words.index(task) > sections.index("Synthetic stand-in")


def test_card_helpers_read_titles_and_sections() -> None:
    text = "# Data card: PTB-XL (12-lead ECG)\n\n## Summary\ntext\n```\n## not a section\n```\n## Labels\n"
    assert card_sections(text) == ["Summary", "Labels"]
    assert card_title(text) == "PTB-XL (12-lead ECG)"
    assert card_title("# Model card: x\n") is None
    assert dataset_name("ptbxl.md") == "PTB-XL"
    assert dataset_name("brats.md") == "BraTS"
    assert dataset_name("breakhis.md") == "BreaKHis"
    assert dataset_name("no-such-card.md") == "no-such-card"


# -- model cards ---------------------------------------------------------------------------------------------------
def _card(tmp_path: Path, **kw: object) -> str:
    args: dict = {
        "title": "test model",
        "task": "ecg",
        "model_name": "ecg_protoecgnet",
        "paper": "Sethi et al. 2025",
        "summary": "A summary.",
        "intended_use": "Research.",
        "data": "Some records.",
        "data_card": "ptbxl.md",
        "metrics": {"auroc": 0.5},
        "provenance": {"dataset": "ptbxl", "seed": 0},
        **kw,
    }
    return write_model_card(tmp_path / "MODEL_CARD.md", **args).read_text(encoding="utf-8")


def _named_cards(text: str) -> list[str]:
    return re.findall(r"data_cards/([\w.-]+\.md)", text)


def test_model_card_has_every_section_in_order(tmp_path: Path) -> None:
    text = _card(tmp_path)
    assert card_sections(text) == list(MODEL_CARD_SECTIONS)
    assert "Not a medical device; not for diagnosis" in text
    assert "Data card: `data_cards/ptbxl.md`." in text
    assert "- synthetic: false" in text  # the flag is there even when the provenance lacks it
    assert '"auroc": 0.5' in text
    assert "- none stated" in text  # an empty section still says so


def test_every_data_card_a_model_card_names_exists(tmp_path: Path) -> None:
    for synthetic in (False, True):
        text = _card(tmp_path, synthetic=synthetic, data_card=SYNTHETIC_CARD if synthetic else "ptbxl.md")
        named = _named_cards(text)
        assert named
        assert all(data_card_path(name) is not None for name in named), named


@pytest.mark.parametrize("task", list_tasks())
def test_synthetic_model_card_names_the_real_dataset_it_stands_in_for(tmp_path: Path, task: str) -> None:
    real = get_task(task).data_card
    # as the training runner writes it: the synthetic card, the real one in the provenance
    provenance = {"data_card": SYNTHETIC_CARD, "synthetic": True, "stands_in_for": real, "trained_by": "medinfer demo"}
    text = _card(tmp_path, task=task, data_card=SYNTHETIC_CARD, synthetic=True, provenance=provenance)
    assert card_sections(text) == list(MODEL_CARD_SECTIONS)
    expected = (
        f"Synthetic stand-in for {dataset_name(real)}: see `data_cards/synthetic.md` (section `{task}`) for how the "
        f"data were made, and `data_cards/{real}` for the real dataset they imitate."
    )
    assert expected in text
    assert "- synthetic: true" in text
    assert "`medinfer demo` model" in text
    assert set(_named_cards(text)) == {SYNTHETIC_CARD, real}


def test_synthetic_model_card_finds_the_real_card_from_the_task(tmp_path: Path) -> None:
    # no stands_in_for anywhere: the registered task's card is the real one
    text = _card(tmp_path, task="brats", data_card=SYNTHETIC_CARD, synthetic=True, provenance={"synthetic": True})
    assert "Synthetic stand-in for BraTS" in text
    assert "`data_cards/brats.md`" in text


def test_synthetic_model_card_of_an_unknown_task_says_the_real_dataset_is_not_recorded(tmp_path: Path) -> None:
    text = _card(tmp_path, task="line", data_card=SYNTHETIC_CARD, synthetic=True, provenance=None)
    assert "the real dataset they stand in for is not recorded" in text
    assert _named_cards(text) == [SYNTHETIC_CARD]


def test_model_card_flags_a_data_card_that_does_not_exist(tmp_path: Path) -> None:
    text = _card(tmp_path, data_card="no-such-card.md")
    assert "`data_cards/no-such-card.md` (no such data card in this installation)" in text


# -- the README's settings table -----------------------------------------------------------------------------------
def _page_table(page: str) -> str:
    text = (REPO / page).read_text(encoding="utf-8")
    assert text.count(TABLE_BEGIN) == 1, f"{page} lacks the settings table's marker line {TABLE_BEGIN!r}"
    assert text.count(TABLE_END) == 1, f"{page} lacks the settings table's end marker {TABLE_END!r}"
    return text.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0].strip("\n") + "\n"


@pytest.mark.parametrize("page", SETTINGS_PAGES)
def test_settings_tables_match_the_settings_class(page: str) -> None:
    assert _page_table(page) == settings_markdown_table(), (
        f"{page}'s settings table differs from app.settings.Settings; regenerate it with "
        f"`python -m app.settings --update {page}`"
    )


def test_settings_table_has_one_row_per_field() -> None:
    table = settings_markdown_table()
    rows = table.strip().splitlines()[2:]
    assert len(rows) == len(Settings.model_fields)
    for name in Settings.model_fields:
        assert sum(row.startswith(f"| `MEDINFER_{name.upper()}` |") for row in rows) == 1, name
    by_name = {row.split("`")[1]: row for row in rows}
    assert "| integer, ≥ 0, ≤ 65535 | `8000` |" in by_name["MEDINFER_PORT"]
    assert "| text | empty |" in by_name["MEDINFER_API_KEYS"]
    assert "| path | none |" in by_name["MEDINFER_API_KEYS_FILE"]
    assert "| true/false | `true` |" in by_name["MEDINFER_WARMUP"]
    assert "| number, > 0 | `86400` |" in by_name["MEDINFER_RESULT_TTL_S"]
    assert "| JSON object | `{}` |" in by_name["MEDINFER_TASK_OPTIONS"]
    assert "`~/.cache/medinfer/checkpoints`" in by_name["MEDINFER_CHECKPOINTS"]


def test_documented_factory_defaults_are_what_the_factories_give(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MEDINFER_CHECKPOINTS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name, shown in FACTORY_DEFAULTS.items():
        factory = Settings.model_fields[name].default_factory
        assert factory is not None, name
        assert factory() == Path(shown.replace("~", str(tmp_path), 1)), name


def test_a_field_the_table_cannot_describe_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Settings.model_fields["host"], "description", None)
    with pytest.raises(ValueError, match=r"Settings\.host has no description"):
        settings_markdown_table()
    monkeypatch.undo()
    monkeypatch.setattr(settings_module, "FACTORY_DEFAULTS", {"checkpoints": "~/x"})
    with pytest.raises(ValueError, match=r"Settings\.data_dir: .*FACTORY_DEFAULTS"):
        settings_markdown_table()


def test_regenerating_rewrites_only_the_table(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    stale = f"# title\n\n{TABLE_BEGIN}\n| old | table |\n{TABLE_END}\n\nafter\n"
    readme.write_text(stale, encoding="utf-8")
    assert settings_module.main(["--check", str(readme)]) == 1
    assert settings_module.main(["--update", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text == f"# title\n\n{TABLE_BEGIN}\n{settings_markdown_table()}{TABLE_END}\n\nafter\n"
    assert settings_module.main(["--check", str(readme)]) == 0
    assert replace_settings_table(text) == text


@pytest.mark.parametrize(
    "text",
    ["no markers", f"{TABLE_BEGIN}\nonly the start", f"{TABLE_END}\n{TABLE_BEGIN}\n", TABLE_BEGIN * 2 + TABLE_END],
)
def test_markers_missing_or_out_of_order_are_refused(text: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected one line"):
        replace_settings_table(text)
    path = tmp_path / "README.md"
    path.write_text(text, encoding="utf-8")
    assert settings_module.main(["--update", str(path)]) == 2
    assert path.read_text(encoding="utf-8") == text


def test_markdown_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert settings_module.main(["--markdown"]) == 0
    assert capsys.readouterr().out == settings_markdown_table()


def test_readme_links_point_at_files_that_exist() -> None:
    links = re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", README.read_text(encoding="utf-8"))
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert "docs/deployment.md" in local
    missing = [link for link in local if not (REPO / link).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
