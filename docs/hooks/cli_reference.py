"""MkDocs hook: the command-line reference of docs/cli.md, generated from the `captionkit`
command itself when the site is built.

captionkit's CLI is a Typer app; Typer writes Markdown for a command and its subcommands
(`typer.cli.get_docs_for_click`, what `typer ... utils docs` prints). The hook puts that text where
docs/cli.md has the marker line, so the page always documents the commands as they are.
"""

from __future__ import annotations

import re

import typer
from typer.cli import get_docs_for_click

MARKER = "<!-- captionkit commands -->"


def cli_reference() -> str:
    """Markdown for `captionkit` and every subcommand: usage, arguments, options with their
    help and defaults. Headings start at level 2 (the page has the title)."""
    from captionkit.cli import app

    command = typer.main.get_command(app)
    context = typer.Context(command, info_name="captionkit")
    text = get_docs_for_click(obj=command, ctx=context, name="captionkit", indent=1)
    return "\n".join(_escape_html(line) for line in text.splitlines()) + "\n"


def _escape_html(line: str) -> str:
    """`<unk>` and the like in help texts, outside code spans, as text rather than HTML."""
    if line.startswith(("```", "$ ")):
        return line
    parts = re.split(r"(`[^`]*`)", line)
    return "".join(p if p.startswith("`") else p.replace("<", "&lt;").replace(">", "&gt;")
                   for p in parts)  # fmt: skip


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_reference())
