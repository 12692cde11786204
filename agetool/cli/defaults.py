"""The config file and ``AGETOOL_<KEY>`` variables (``agetool.config``) as the defaults of flags.

Each setting becomes the default of every option of the same name (``parser-weights`` is the
default of ``--parser-weights`` wherever a command has it); a flag given on the command line wins.
"""

from __future__ import annotations

from pathlib import Path


#: settings whose option name means something else on some command: applied only where the
#: option reads this way (``compare --model`` names an identity model, not the generator)
SAME_MEANING = {"model": "auto|male|female"}


def default_map(command, settings) -> dict:
    """click's ``default_map`` for ``command`` and its subcommands from ``settings``."""
    out = {}
    for param in command.params:
        key = (param.name or "").replace("_", "-")
        if key in SAME_MEANING and param.metavar != SAME_MEANING[key]:
            continue
        if getattr(param, "param_type_name", "") == "option" and key in settings.values:
            value = settings.values[key]
            out[param.name] = str(value) if isinstance(value, Path) else value
    for name, sub in getattr(command, "commands", {}).items():
        inner = default_map(sub, settings)
        if inner:
            out[name] = inner
    return out


def from_config(name: str) -> bool:
    """Whether the current command's option ``name`` took its value from the config (not a flag)."""
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False
    return ctx.get_parameter_source(name) == click.core.ParameterSource.DEFAULT_MAP


def given(name: str) -> bool:
    """Whether option ``name`` was given on the command line."""
    import click

    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
