"""``agetool weights ...``: list, download, verify, locate and import model files."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from agetool.cli import app
from agetool.cli import console

weights_app = typer.Typer(
    help=("Model files: list, download, verify, locate and import them.\n\n"
          "The registry is weights.toml (AGETOOL_REGISTRY replaces it); files are cached under "
          "AGETOOL_CACHE (default ~/.cache/agetool) and the Hugging Face cache."),
    no_args_is_help=True,
)
app.add_typer(weights_app, name="weights")


def progress_factory(bar):
    """A ``progress(description, total_bytes) -> advance`` callable (the protocol of
    ``agetool.weights``) that adds one task per transfer to a rich ``Progress``."""

    def progress(description: str, total: int | None):
        task = bar.add_task(description, total=total)

        def advance(n: int) -> None:
            bar.advance(task, n)

        advance.close = lambda: bar.remove_task(task)
        return advance

    return progress


@contextmanager
def byte_progress():
    """A transient byte-counting bar on stderr (hidden when stderr is not a terminal)."""
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn(), console=console.err, transient=True, disable=not sys.stderr.isatty())
    with bar:
        yield progress_factory(bar)


def report(message: str) -> None:
    console.info(message)


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


@weights_app.command("list")
def list_() -> None:
    """Show every registered model file, its license and whether it is cached."""
    from rich.table import Table

    from agetool import weights

    table = Table(show_edge=False, caption=f"registry: {weights.registry_path()}  cache: {weights.cache_dir()}")
    for column in ("name", "kind", "size", "license", "cached", "path"):
        table.add_column(column, overflow="fold")
    for st in weights.statuses():
        art = st.artifact
        if st.path is not None:
            cached = "yes" if st.verified else "yes (not yet verified)"
        elif st.partial:
            cached = f"partial ({human_size(st.partial)})"
        else:
            cached = "no"
        size = art.size or st.record.get("size")
        license_ = art.license + (" [non-commercial]" if art.non_commercial and "commercial" not in art.license else "")
        table.add_row(art.name, art.kind, human_size(size), license_, cached, str(st.path or ""))
    console.out.print(table)


@weights_app.command("download")
def download(
    names: Annotated[Optional[list[str]], typer.Argument(help="Names from `agetool weights list` (default: all).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Download every registered file.")] = False,
) -> None:
    """Download and verify model files (resuming interrupted downloads)."""
    from agetool import weights
    from agetool.errors import AgetoolError

    targets = list(weights.load_registry()) if all_ or not names else list(dict.fromkeys(names))
    failed = []
    with byte_progress() as progress:
        for name in targets:
            try:
                path = weights.fetch(name, progress=progress, report=report)
            except AgetoolError as e:
                if len(targets) == 1:
                    raise
                console.error(console.message(e))
                failed.append(name)
                continue
            console.out.print(f"{name}: {path}", markup=False, highlight=False)
    if failed:
        console.error(f"{len(failed)} of {len(targets)} failed: {', '.join(failed)}")
        raise typer.Exit(1)


@weights_app.command("verify")
def verify(
    names: Annotated[Optional[list[str]], typer.Argument(help="Names to check (default: all cached).")] = None,
) -> None:
    """Re-hash cached files against the registry; damaged files are deleted. Exit 1 if any was bad."""
    from rich.table import Table

    from agetool import weights

    with byte_progress() as progress:
        checks = weights.verify(names or None, progress=progress, report=report)
    checks = [c for c in checks if c.ok is not None or names]
    if not checks:
        console.info("nothing is cached yet")
        return
    table = Table(show_edge=False)
    for column in ("name", "status", "path"):
        table.add_column(column, overflow="fold")
    for c in checks:
        state = "[green]ok[/]" if c.ok else ("not cached" if c.ok is None else f"[red]bad:[/] {c.detail}")
        table.add_row(c.name, state, str(c.path or ""))
    console.out.print(table)
    bad = [c.name for c in checks if c.ok is False]
    if bad:
        console.error(f"{len(bad)} damaged file(s) deleted: {', '.join(bad)}; `agetool weights download` fetches them again")
        raise typer.Exit(1)


@weights_app.command("path")
def path(name: Annotated[str, typer.Argument(help="A name from `agetool weights list`.")]) -> None:
    """Print the local path of a cached model file."""
    from agetool import weights
    from agetool.errors import WeightsError

    if weights.status(name).path is None:
        raise WeightsError(f"{name} is not cached", hint=f"run `agetool weights download {name}`")
    console.out.print(str(weights.fetch(name, offline=True, report=report)), markup=False, highlight=False)


@weights_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="The file fetched by hand.", exists=True, dir_okay=False)],
    name: Annotated[str, typer.Option("--as", help="The registry name it stands for.")],
) -> None:
    """Verify a file fetched by hand and place it in the cache."""
    from agetool import weights

    with byte_progress() as progress:
        dest = weights.import_file(file, name, progress=progress, report=report)
    console.out.print(f"{name}: {dest}", markup=False, highlight=False)
