"""The README and docs/ cannot go stale silently: every link resolves, every `ganforge`
flag, every `section.key` and every eval.json key they quote exists today, and the README
stays a five-minute read."""

from __future__ import annotations

import re

import yaml

from ganforge.cli import build_parser
from ganforge.metrics.headline import EVAL

from .conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
CODE = re.compile(r"```[a-z]*\n(.*?)```|`([^`\n]+)`", re.S)
# a command line: `ganforge` at a line's start, after a space or a venv's bin/ (not `src/ganforge
# knows`, not `createdb -U ganforge mlflow`)
COMMAND = re.compile(r"(?:^|(?<=\s)|(?<=bin/))(?<!-U )ganforge ([a-z]+)([^|#\n]*)", re.M)
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z-]*)")
KEY = re.compile(r"(?:--set|-S) ([a-z_]+)\.([a-z_0-9]+)=")


def _text(page) -> str:
    return page.read_text()


def _code(page) -> str:
    """What the page shows as code: fenced blocks and inline spans (prose is not checked)."""
    return "\n".join(a or b for a, b in CODE.findall(_text(page)))


def test_readme_is_a_five_minute_read():
    lines = _text(ROOT / "README.md").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move the reasoning to docs/"
    first_screen = "\n".join(lines[:40])
    assert "make run" in first_screen and "make test" in first_screen


def test_every_link_resolves():
    missing = [
        f"{page.relative_to(ROOT)}: {target}"
        for page in PAGES
        for target in LINK.findall(_text(page))
        if not target.startswith(("http://", "https://", "mailto:"))
        and not (page.parent / target).exists()
    ]
    assert not missing, missing


def _subcommands() -> dict[str, set[str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "stage")
    return {
        name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()
    }


def test_every_ganforge_command_and_flag_exists():
    stages, wrong = _subcommands(), []
    for page in PAGES:
        for name, rest in COMMAND.findall(_code(page)):
            if name not in stages:
                wrong.append(f"{page.name}: ganforge {name}")
                continue
            wrong += [
                f"{page.name}: ganforge {name} {flag}"
                for flag in FLAG.findall(rest)
                if flag not in stages[name]
            ]
    assert not wrong, wrong


def test_every_params_key_quoted_exists():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    wrong = [
        f"{page.name}: {section}.{key}"
        for page in PAGES
        for section, key in KEY.findall(_text(page))
        if section != "section" and key not in (params.get(section) or {})  # not the placeholder
    ]
    assert not wrong, wrong


def test_the_readme_quotes_only_keys_eval_json_has():
    """The default run's table: every key in its first column is a headline number."""
    text = _text(ROOT / "README.md")
    table = text[text.index("| key | default run |") :].split("\n\n")[0]
    quoted = {
        k for row in table.splitlines()[2:] for k in re.findall(r"`(\w+)`", row.split("|")[1])
    }
    assert quoted and quoted <= {h.name for h in EVAL}, quoted - {h.name for h in EVAL}
