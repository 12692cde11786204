"""agetool command line. The only place that prints, picks the device and exits.

Each command lives in its own module under ``agetool/cli/``, named after it, and is registered on
``app`` in one table below.
Heavy libraries (torch, cv2, dlib) are imported inside command bodies, so ``--help`` is fast.
"""

from __future__ import annotations

import os
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
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error (accepted anywhere "
                               "on the command line)."),
) -> None:
    """Age progression across the lifespan from one photo."""


# Every command, in the order ``agetool --help`` lists them: name -> the function that runs it (one
# module per command, named after it; a group's subcommands in one module). Each module imports only
# typer and agetool's light leaves at the top; the libraries a command needs load in its body.
from agetool.cli import (age, align, compare, dataset, estimate, eval, info, inspect, parse,  # noqa: E402
                         serve, train, video, weights)

for _name, _function, _no_args_is_help in (
    ("age", age.age, True),
    ("video", video.video, True),
    ("estimate", estimate.estimate, True),
    ("align", align.align, True),
    ("parse", parse.parse, True),
    ("compare", compare.compare, True),
    ("info", info.info, False),
    ("eval", eval.eval_command, True),
    ("serve", serve.serve, False),
    ("inspect", inspect.inspect, True),
):
    app.command(_name, no_args_is_help=_no_args_is_help)(_function)
for _name, _group in (("weights", weights.weights_app), ("train", train.train_app), ("dataset", dataset.dataset_app)):
    app.add_typer(_group, name=_name)

class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, so that it stops as it does on Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


#: the stop signal received during this run (the parser hides the exception that carried it)
_received: int | None = None


def _raise_terminated(signum, frame) -> None:
    global _received
    _received = signum
    raise Terminated(signum)


def _raise_interrupt(signum, frame) -> None:
    """Ctrl-C: ``KeyboardInterrupt`` as Python's own handler raises it, the signal noted first."""
    global _received
    _received = signum
    raise KeyboardInterrupt


#: signals that stop a run the way Ctrl-C does: temporary files removed, child processes ended
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def _quiet_dependencies() -> None:
    """Warnings of the libraries the stages call (face-alignment's notes on its own internals) are not
    the user's to act on: the command line hides them; the library leaves warning filters alone."""
    import warnings

    warnings.filterwarnings("ignore", module=r"face_alignment(\.|$)")
    # torch's note on a file it is refusing to unpickle anyway (the refusal is the message)
    warnings.filterwarnings("ignore", message="Detected pickle protocol")


def _install_signal_handlers() -> dict:
    """Route the stop signals to exceptions; returns the previous handlers (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}
    for name in STOP_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is None:  # SIGHUP does not exist on Windows
            continue
        old[signum] = signal.getsignal(signum)
        handler = _raise_interrupt if name == "SIGINT" else _raise_terminated
        signal.signal(signum, handler)
    return old


def _restore_signal_handlers(old: dict) -> None:
    import signal

    for signum, handler in old.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


_COMMAND = None


def command():
    """The click command tree of ``app``, built once, with help pages tidied (see ``agetool.cli.helptext``)."""
    global _COMMAND
    if _COMMAND is None:
        from agetool.cli.helptext import tidy

        _COMMAND = tidy(typer.main.get_command(app))
    return _COMMAND


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (never raises SystemExit).

    Exit codes: 0 success, 1 failure, 2 usage error, 128 + N when stopped by signal N
    (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    _console.DEBUG = debug
    _console.TYPED = args  # messages show values as typed (1e309, not inf)
    _console.MODEL_FILE_FLAG = "--weights"  # a generator file; compare's --model is another's
    _quiet_dependencies()
    global _received
    _received = None
    old = _install_signal_handlers()
    try:
        return _run(args, debug)
    finally:
        _restore_signal_handlers(old)


def _run(args: list[str], debug: bool) -> int:
    from agetool.errors import AgetoolError

    try:
        try:
            rv = command().main(args=args, prog_name="agetool", standalone_mode=False, default_map=_defaults(args))
        except KeyboardInterrupt as e:
            return _interrupted(e)
        if isinstance(rv, _console.Stopped):  # a command that stops on a signal by design (serve) said so itself
            return int(rv)
        if rv == 130:  # the parser turns Ctrl-C inside a command into a return value of 130
            return _interrupted(None)
        return rv if isinstance(rv, int) else 0
    except KeyboardInterrupt as e:  # a second signal while handling the first
        return _interrupted(e)
    except (typer.Exit, typer.Abort) as e:  # the parser turns Ctrl-C into Exit(130) or Abort
        stop = _stop_cause(e)
        if stop is not None or isinstance(e, typer.Abort) or getattr(e, "exit_code", 0) == 130:
            return _interrupted(stop)
        return e.exit_code
    except Exception as e:  # noqa: BLE001
        if _received is not None or _stop_cause(e) is not None:
            # raised by the stop: Ctrl-C can land inside a lock's or a thread pool's bookkeeping
            # (a "cannot release un-acquired lock" from a wait it cut short); the run was stopped
            if debug:
                _console.traceback()
            return _interrupted(_stop_cause(e))
        if isinstance(e, AgetoolError):
            return _agetool_error(e, debug)
        if _is_click_error(e):  # usage errors from the argument parser (exit 2)
            return _click_error(e)
        return _unexpected(e, debug)


def _defaults(args: list[str]) -> dict:
    """The config file's and the environment's settings as flag defaults (see ``agetool.config``);
    a help page or the version is shown even when they are wrong."""
    from agetool.cli.defaults import default_map
    from agetool.config import load_settings
    from agetool.errors import AgetoolError

    try:
        return default_map(command(), load_settings())
    except AgetoolError:
        if not args or args[0] == "info" or any(a in ("-h", "--help", "--version") for a in args):
            return {}  # info reports the config error itself, after the versions and devices
        raise


def _stop_cause(e: BaseException) -> KeyboardInterrupt | None:
    """The stop signal's exception that ``e`` was raised from or while handling, at any depth."""
    seen: set[int] = set()
    todo = [e.__cause__, e.__context__]
    while todo:
        inner = todo.pop()
        if inner is None or id(inner) in seen:
            continue
        if isinstance(inner, KeyboardInterrupt):
            return inner
        seen.add(id(inner))
        todo += [inner.__cause__, inner.__context__]
    return None


def _interrupted(e: KeyboardInterrupt | None) -> int:
    import signal

    signum = getattr(e, "signum", None) or _received or signal.SIGINT
    name = signal.Signals(signum).name
    how = "interrupted" if signum == signal.SIGINT else f"stopped by {name}"
    _console.error(f"{how}; finished outputs were kept, partial ones removed")
    return 128 + int(signum)


def _is_click_error(e: Exception) -> bool:
    return callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int)


def _click_error(e) -> int:
    """A parser error printed as every other error: one ``error: ...`` line, click's own text, and
    where an argument is missing, what is missing and a pointer to the command's help page (the
    help page itself only for ``agetool`` alone)."""
    ctx = getattr(e, "ctx", None)
    name = type(e).__name__
    if name == "NoArgsIsHelpError" and (ctx is None or hasattr(ctx.command, "commands")):
        e.show()  # agetool or a group alone: the list of commands is what is missing
        return e.exit_code
    if name in ("NoArgsIsHelpError", "MissingParameter") and ctx is not None:
        param = getattr(e, "param", None) or next((p for p in ctx.command.params if p.required), None)
        what = "arguments" if param is None else (
            param.metavar or param.name.upper() if param.param_type_name == "argument" else param.opts[0])
        _console.error(f"{ctx.command_path}: missing {what}; see {ctx.command_path} --help")
        return 2
    _console.error(e.format_message())
    return e.exit_code


def _agetool_error(e, debug: bool) -> int:
    if debug:
        _console.traceback()
    _console.error(_console.message(e))
    return e.exit_code


#: what a CPU or GPU allocation failure says, whichever library raised it
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "defaultcpuallocator",
             "failed to allocate")


def is_out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    if isinstance(e, RuntimeError):
        first = str(e).lower()[:400]
        return any(t in first for t in _OOM_TEXT)
    return False


OUT_OF_MEMORY = "out of memory; try a smaller --batch-size, a smaller photo, or another --device"


def _unexpected(e: Exception, debug: bool) -> int:
    if debug:
        _console.traceback()
    if is_out_of_memory(e):
        _console.error(OUT_OF_MEMORY)
        return 1
    first = str(e).splitlines()[0] if str(e) else ""
    _console.error(f"internal error: {type(e).__name__}: {first} (rerun with --debug for the traceback)")
    return 1


def main() -> None:
    code = run()
    from agetool.models import loading_in_background

    if loading_in_background():
        # A model still loads for a run that has ended (it failed early, or was stopped): leave now
        # rather than wait for it; every output is final or removed by this point.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
