"""Help pages without raw type hints: every parameter gets an explicit metavar.

Typer shows a parameter's Python annotation (``<bool>``, ``<list[Path]>``, ``{inputs}``) where no
metavar is set. ``tidy`` walks the finished click command tree once and gives each parameter the
conventional name: flags none, ``FILE`` / ``DIR`` / ``PATH`` for paths, ``TEXT``, ``INTEGER``,
``NUMBER``, or the choices; arguments their name in capitals.
"""

from __future__ import annotations

import typing
from pathlib import Path

# Written against both Typer layouts: parameters built on click (``param.type``) and Typer's own
# parameters (``param.type_descriptor``); nothing here imports click itself.


def _is_argument(param) -> bool:
    return getattr(param, "param_type_name", "") == "argument"


def _annotation(param):
    """The parameter's Python type without Optional / list around it (None when not known)."""
    desc = getattr(param, "type_descriptor", None)
    a = getattr(desc, "annotation", None)
    for _ in range(3):
        args = [x for x in typing.get_args(a) if x is not type(None)]
        if typing.get_origin(a) in (list, tuple, typing.Union) or type(a).__name__ == "UnionType":
            a = args[0] if args else None
    return a


def _info(param, name: str):
    """A setting given to the parameter (``dir_okay`` ...), from click's type or Typer's info."""
    for holder in (getattr(param, "type", None),
                   getattr(getattr(param, "type_descriptor", None), "parameter_info", None)):
        if holder is not None and hasattr(holder, name):
            return getattr(holder, name)
    return None


def metavar(param) -> str:
    """The metavar ``param`` is shown with: ``""`` for flags."""
    if _is_argument(param):
        return param.name.upper()
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    t = getattr(param, "type", None)
    kind = getattr(t, "name", None) or ""
    a = _annotation(param)
    choices = getattr(t, "choices", None)
    if choices:
        return "|".join(str(c) for c in choices)
    if kind == "path" or (isinstance(a, type) and issubclass(a, Path)):
        if _info(param, "dir_okay") is False:
            return "FILE"
        return "DIR" if _info(param, "file_okay") is False else "PATH"
    if kind.startswith("integer") or a is int:
        return "INTEGER"
    if kind.startswith("float") or a is float:
        return "NUMBER"
    return "TEXT"


def _argument_usage(param):
    def usage() -> str:
        name = param.metavar if param.required else f"[{param.metavar}]"
        return name + ("..." if param.nargs != 1 else "")

    return usage


def _with_tidy_help_option(command):
    get = command.get_help_option

    def get_help_option(ctx):
        option = get(ctx)
        if option is not None and option.metavar is None:
            option.metavar = ""
        return option

    command.get_help_option = get_help_option


def tidy(command):
    """``command`` and its subcommands with an explicit metavar on every parameter; a command (not
    a group) given nothing says in one line what is missing instead of showing its whole help page."""
    _with_tidy_help_option(command)
    if not hasattr(command, "commands"):
        command.no_args_is_help = False
    for param in command.params:
        if param.metavar is None:
            param.metavar = metavar(param)
        if _is_argument(param):
            # Typer writes required arguments as {name} in the usage line and their type beside them
            if hasattr(param, "_usage_display_name"):
                param._usage_display_name = _argument_usage(param)
            if hasattr(param, "display_type_rich"):
                param.display_type_rich = lambda ctx=None: None
    for sub in getattr(command, "commands", {}).values():
        tidy(sub)
    return command


def walk(command, path: tuple[str, ...] = ()):
    """``(path, command)`` for ``command`` and every subcommand below it."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from walk(sub, (*path, name))
