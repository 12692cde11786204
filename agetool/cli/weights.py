"""``agetool weights ...``: list, download, verify, locate and import model files."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from agetool.cli import console

weights_app = typer.Typer(
    help=("Model files: list, download, verify, locate and import them.\n\n"
          "The registry is weights.toml (AGETOOL_REGISTRY replaces it); files are cached under "
          "AGETOOL_CACHE (default ~/.cache/agetool) and the Hugging Face cache.\n\n"
          "Examples:\n\n"
          "  agetool weights list\n\n"
          "  agetool weights download lats-male deeplab-parser\n\n"
          "  agetool weights import ~/Downloads/latest_net_g_running.pth --as lats-male\n\n"
          "  agetool weights import ~/Downloads/lats-weights/"),
    no_args_is_help=True,
)

def progress_factory(bar):
    """A ``progress(description, total_bytes) -> advance`` callable (the protocol of
    ``agetool.weights``) that adds one task per transfer to a rich ``Progress``."""
    from rich.markup import escape

    def progress(description: str, total: int | None):
        task = bar.add_task(escape(description), total=total)

        def advance(n: int) -> None:
            bar.advance(task, n)

        advance.close = lambda: bar.remove_task(task)
        return advance

    return progress


@contextmanager
def byte_loading():
    """The loading context of a weights command: a transient byte-counting bar on stderr (hidden
    when stderr is not a terminal) and notices as information."""
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    from agetool.loading import Loading

    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn(), console=console.err, transient=True, disable=not sys.stderr.isatty())
    with bar:
        yield Loading(progress=progress_factory(bar), report=report)


def report(message: str) -> None:
    console.info(message)


def human_size(n: int | None) -> str:
    from agetool.weights import human_size as size

    return size(n)


def _table(*columns: str, **kwargs):
    from rich.table import Table

    table = Table(show_edge=False, **kwargs)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _cells(*values) -> list:
    """Table cells as plain text: names, licenses and paths are never read as markup."""
    from rich.text import Text

    return [v if isinstance(v, Text) else Text(str(v)) for v in values]


@weights_app.command("list")
def list_() -> None:
    """Show every registered model file, its license and whether it is cached.

    Example: agetool weights list
    """
    from rich.text import Text

    from agetool import weights

    print_models(weights.statuses())
    console.out.print(Text(f"registry: {weights.registry_path()}\ncache: {weights.cache_dir()}"))


def _cached_word(st) -> str:
    """Short enough for a table column at 80 columns; ``st.where`` in full goes under the table."""
    if st.path is not None:
        return ("yes, yours" if st.own else "yes") if st.verified else "not verified"
    if st.bundled is not None:
        return "bundled"
    return f"partial {human_size(st.partial)}" if st.partial else "no"


def print_models(statuses, *, kind: bool = True) -> None:
    """Model files as a table that reads at 80 columns and through a pipe (names whole, licenses
    wrapped at words), then one line per file at hand with its path."""
    from rich.table import Table

    table = Table(show_edge=False, box=None, pad_edge=False)
    for column in ("name", *(["kind"] if kind else []), "size", "cached"):  # size: as the registry publishes it
        table.add_column(column, no_wrap=True)
    table.add_column("license", ratio=1)
    for st in statuses:
        art = st.artifact
        license_ = art.license + (" [non-commercial]" if art.non_commercial and "commercial" not in art.license else "")
        published = st.record.get("size") if st.record.get("form", "released") == "released" else None
        size = human_size(art.size or published)  # the registry's (or a download's), never an own file's
        table.add_row(*_cells(art.name, *([art.kind] if kind else []), size, _cached_word(st), license_))
    console.out.print(table)
    for st in statuses:
        where = st.path or st.bundled
        if where is not None:
            package = (st.artifact.bundled or ("",))[0].replace("_", "-")
            note = {"yes, yours": "your file, ", "bundled": f"bundled with the {package} package, ",
                    "not verified": "not yet verified, "}.get(_cached_word(st), "")
            console.out.print(_cells(f"{st.artifact.name}: {where} ({note}{_on_disk(where)})")[0])
            if st.converted is not None and st.converted != where:
                console.out.print(_cells(f"{st.artifact.name}: {st.converted} (converted, {_on_disk(st.converted)})")[0])


def _on_disk(path) -> str:
    """The size of the file as it is on disk (the table's size is the registry's, as published)."""
    try:
        return f"{human_size(Path(path).stat().st_size)} on disk"
    except OSError:
        return "size unknown"


@weights_app.command("download")
def download(
    names: Annotated[Optional[list[str]], typer.Argument(help="Names from `agetool weights list` (default: all).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Download every registered file.")] = False,
) -> None:
    """Download and verify model files (resuming interrupted downloads).

    Example: agetool weights download lats-male deeplab-parser
    """
    from agetool import weights
    from agetool.errors import AgetoolError

    targets = list(weights.load_registry()) if all_ or not names else list(dict.fromkeys(names))
    failed = []
    with byte_loading() as loading:
        for name in targets:
            st = weights.status(name)
            if st.path is None and st.bundled is not None:
                console.out.print(f"{name}: {st.bundled} ({st.where})", markup=False, highlight=False)
                continue
            try:
                path = weights.fetch(name, loading=loading)
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
    """Re-hash cached files against the registry; damaged files are deleted. Exit 1 if any was bad.

    Example: agetool weights verify
    """
    from rich.text import Text

    from agetool import weights

    with byte_loading() as loading:
        checks = weights.verify(names or None, loading=loading)
    checks = [c for c in checks if c.ok is not None or names]
    if not checks:
        console.info("nothing is cached yet")
        return
    table = _table("name", "status", "path")
    for c in checks:
        if c.ok:
            state = Text("ok", style="green")
        elif c.ok is None:
            state = Text("not cached")
        else:
            state = Text.assemble(("bad: ", "red"), c.detail)
        table.add_row(*_cells(c.name, state, c.path or ""))
    console.out.print(table)
    bad = [c.name for c in checks if c.ok is False]
    if bad:
        console.error(f"{len(bad)} damaged file(s) deleted: {', '.join(bad)}; `agetool weights download` fetches them again")
        raise typer.Exit(1)


@weights_app.command("path")
def path(name: Annotated[str, typer.Argument(help="A name from `agetool weights list`.")]) -> None:
    """Print the local path of a cached model file.

    Example: agetool weights path lats-male
    """
    from agetool import weights
    from agetool.errors import WeightsError
    from agetool.loading import Loading

    st = weights.status(name)
    if st.path is None and st.bundled is not None:
        console.out.print(str(st.bundled), markup=False, highlight=False)
        return
    if st.path is None:
        raise WeightsError(f"{name} is not cached", hint=f"run `agetool weights download {name}`")
    console.out.print(str(weights.fetch(name, loading=Loading(offline=True, report=report))), markup=False,
                      highlight=False)


@weights_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="A file you have (released zip, latest_net_g_running.pth, "
                                              "deeplab_model.pth, an agetool .safetensors, ...) or a folder of them.",
                                         exists=True)],
    name: Annotated[Optional[str], typer.Option("--as", metavar="NAME", help="The registry name it stands for "
                                                              "(default: recognised by size, name or folder).")] = None,
    trust: Annotated[bool, typer.Option("--trust", help="A file of your own (a fine-tuned parser, another "
                                        "classifier) used for --as NAME: no published size or checksum is asked "
                                        "for; it must still load, and `weights list` marks it as yours.")] = False,
) -> int:
    """Verify files you already have and place them in the cache, so later runs (and --offline) use them.

    Examples:

      agetool weights import latest_net_g_running.pth --as lats-male

      agetool weights import males_model.zip --as lats-male

      agetool weights import ~/Downloads/lats-weights/

      agetool weights import my_parser.pth --as deeplab-parser --trust
    """
    from agetool import weights
    from agetool.errors import UsageError, WeightsError

    if name is not None:
        weights.get(name)  # a name that is not registered is a usage error, before any file is read
    with byte_loading() as loading:
        if file.is_dir():
            if name is not None or trust:
                raise UsageError(f"{'--as' if name is not None else '--trust'} takes one file; a folder's files "
                                 "are recognised by size, name or folder")
            try:
                result = weights.import_folder(file, loading=loading)
            except WeightsError as e:
                _skipped(getattr(e, "skipped", []))
                raise
            for item in result.imported:
                console.out.print(f"{item.name}: {item.path}", markup=False, highlight=False)
            _skipped(result.skipped)  # each named with why; the command succeeds when any file was imported
            return 0
        dest = weights.import_file(file, name, trust=trust, loading=loading)
    console.out.print(f"{name or dest.parent.name}: {dest}", markup=False, highlight=False)


def _skipped(skipped) -> None:
    """Each file of a folder that was not imported, with why, in the command line's words."""
    for item in skipped:
        console.warn(f"skipped {console.message(item.reason)}")
