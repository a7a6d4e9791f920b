"""Every configuration key and every command is documented."""

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from agent import cli as agent_cli
from agent.config import SECTIONS, Config
from drivers.decoder import DecoderSettings
from central import cli as central_cli
from central import ops as ops_cli

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _subcommands(parser, prefix=""):
    """The leaf commands of an argparse parser: "run", "prices load", ..."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield prefix
    for group in groups:
        for name, sub in group.choices.items():
            yield from _subcommands(sub, f"{prefix} {name}".strip())


def _config_keys():
    assert set(SECTIONS) == {f.name for f in dataclasses.fields(Config)}
    keys = [f"[{name}] {f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)
            if (name, f.name) not in (("scanner", "decoder"), ("scanner", "devices"))]
    return keys + [f"[scanner.decoder] {f.name}" for f in dataclasses.fields(DecoderSettings)] + ["[[scanner.device]] match"]


@pytest.mark.parametrize("key", _config_keys())
def test_every_agent_configuration_key_is_documented(key):
    assert f"`{key}`" in (DOCS / "configuration.md").read_text()


@pytest.mark.parametrize(
    "program,command",
    [("counterbox", c) for c in _subcommands(agent_cli.parser())]
    + [("counterbox-central", c) for c in _subcommands(central_cli.parser())]
    + [("counterbox-ops", c) for c in _subcommands(ops_cli.parser())],
)
def test_every_command_is_documented(program, command):
    assert re.search(rf"`{re.escape(program)} {re.escape(command)}\b", (DOCS / "commands.md").read_text())


def test_the_journal_schema_version_documented_is_the_one_the_agent_makes():
    from storage import SCHEMA_VERSION

    assert re.findall(r"schema version (\d+);", (DOCS / "configuration.md").read_text()) == [str(SCHEMA_VERSION)]
