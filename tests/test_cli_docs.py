"""The CLI reference in docs/ is the live --help, and every command has Examples."""

from pathlib import Path

from recorder_tracer.cli import docs as clidocs

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def test_cli_reference_matches_the_live_help() -> None:
    assert DOCS.read_text() == clidocs.render(), (
        "docs/cli.md is stale: python -m recorder_tracer.cli.docs > docs/cli.md")


def test_every_command_help_ends_with_examples() -> None:
    for name in [None, *sorted(clidocs.main.commands)]:
        text = clidocs.command_help(name)
        assert "Examples:" in text, name
        assert text.index("Examples:") > text.index("Options:"), name
