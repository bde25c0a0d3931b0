"""Every option of every command, as `--help` shows it, is in docs/CLI.md (under "Options", in the
command's own section) and in the command's row of the README's command table; and neither lists an
option the command does not have (issue 21: the README's `demo` row lacked `--port`, `restore` lacked
`--keep-owners` and `--lock-timeout`). Compared on the argparse tree `tenant-backup` is built from."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from backup_assets.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
COMMON = {"-h", "--help", "--json"}  # every command's: documented once, above the sections
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
LISTED = re.compile(r"`(--[a-z][a-z0-9-]*)")  # docs/CLI.md: an option opens its `…` (not `pg_restore --list`)


def commands() -> dict[str, set[str]]:
    """'verify' / 'keys rewrap' -> the long options its parser takes (without the common ones)."""
    found: dict[str, set[str]] = {}

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for action in subs:
            for name, child in action.choices.items():
                walk(child, [*path, name])
        if path and not subs:
            found[" ".join(path)] = {
                flag for a in parser._actions for flag in a.option_strings if flag.startswith("--")
            } - COMMON

    walk(build_parser(), [])
    return found


def cli_md_sections() -> dict[str, str]:
    text = (ROOT / "docs" / "CLI.md").read_text()
    options = text[text.index("\n## Options\n") :]
    options = options[: options.find("\n## ", 1)] if "\n## " in options[1:] else options
    parts = re.split(r"^### `([^`]+)`\s*$", options, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def readme_rows() -> dict[str, str]:
    """command -> the first cells of its rows in the README's command table, joined."""
    rows: dict[str, str] = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        match = re.match(r"\| `tenant-backup ([a-z]+(?: [a-z]+)?)([^`]*)`", line)
        if match:
            name = match.group(1) if match.group(1) in commands() else match.group(1).split()[0]
            rows[name] = rows.get(name, "") + " " + match.group(2)
    return rows


def test_every_option_is_in_docs_cli_md_under_its_command():
    sections = cli_md_sections()
    assert set(sections) == set(commands()), f"docs/CLI.md sections vs commands: {set(sections) ^ set(commands())}"
    for name, flags in commands().items():
        documented = set(LISTED.findall(sections[name]))
        assert flags <= documented, f"docs/CLI.md, {name}: missing {sorted(flags - documented)}"
        assert documented <= flags, f"docs/CLI.md, {name}: no such option {sorted(documented - flags)}"


def test_every_option_is_in_the_readme_command_table():
    rows = readme_rows()
    assert set(rows) == set(commands()), f"README command rows vs commands: {set(rows) ^ set(commands())}"
    for name, flags in commands().items():
        documented = set(OPTION.findall(rows[name]))
        assert flags <= documented, f"README, {name}: missing {sorted(flags - documented)}"
        assert documented <= flags, f"README, {name}: no such option {sorted(documented - flags)}"
