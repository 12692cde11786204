"""agetool command line. The only place that prints, picks the device and exits.

Commands live in one module each under ``agetool/cli/`` and register themselves on ``app``.
Heavy libraries (torch, cv2, dlib) are imported inside command bodies, so ``--help`` is fast.
"""

from __future__ import annotations

import sys

import typer

from agetool.cli import console as _console

app = typer.Typer(
    name="agetool",
    help=(
        "Age progression across the lifespan from one photo (LATS, ECCV 2020).\n\n"
        "Examples:\n\n"
        "  agetool age me.jpg --out grid.png\n\n"
        "  agetool video me.jpg --fps 30\n\n"
        "  agetool train --data ffhq-aging/males --out runs/males\n\n"
        "Add --debug anywhere to see a full traceback on errors."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)


def _print_version(value: bool) -> None:
    if value:
        from agetool import __version__

        typer.echo(f"agetool {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
) -> None:
    """Age progression across the lifespan from one photo."""


def _register() -> None:
    import importlib

    for name in ("generate", "faces", "weights", "train", "misc"):
        try:
            importlib.import_module(f"agetool.cli.{name}")
        except ModuleNotFoundError as e:  # a command module not present in this build
            if e.name != f"agetool.cli.{name}":
                raise


_register()


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (never raises SystemExit)."""
    from agetool.errors import AgetoolError

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    _console.DEBUG = debug
    try:
        rv = app(args=args, prog_name="agetool", standalone_mode=False)
        if rv == 130:  # the parser turns Ctrl-C inside a command into a return value of 130
            return _interrupted()
        return rv if isinstance(rv, int) else 0
    except typer.Exit as e:  # the parser turns Ctrl-C into exit code 130
        if isinstance(e.__context__, KeyboardInterrupt) or e.exit_code == 130:
            return _interrupted()
        return e.exit_code
    except typer.Abort:
        return _interrupted()
    except AgetoolError as e:
        return _agetool_error(e, debug)
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as e:  # noqa: BLE001
        if _is_click_error(e):  # usage errors from the argument parser (exit 2)
            e.show()
            return e.exit_code
        return _unexpected(e, debug)


def _interrupted() -> int:
    _console.error("interrupted; finished outputs were kept, partial ones removed")
    return 130


def _is_click_error(e: Exception) -> bool:
    return callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int)


def _agetool_error(e, debug: bool) -> int:
    if debug:
        _console.traceback()
    _console.error(_console.message(e))
    return e.exit_code


def _unexpected(e: Exception, debug: bool) -> int:
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        if debug:
            _console.traceback()
        _console.error("out of memory; try a smaller --batch (or --device cpu)")
        return 1
    if debug:
        _console.traceback()
    first = str(e).splitlines()[0] if str(e) else ""
    _console.error(f"internal error: {type(e).__name__}: {first} (rerun with --debug for the traceback)")
    return 1


def main() -> None:
    sys.exit(run())
