"""`agetool age ... --engine ray`: inputs and outputs at URIs, the job on Ray, its summary and profile."""

from __future__ import annotations

import os

from agetool.cli import console


def uri_photos(inputs: list[str], engine: str, timeout: float) -> tuple[list[str], bool, list[str]]:
    """(photo URIs, whether there are several outputs, local paths among them to keep outputs off)
    for inputs given as URIs; those need ``--engine ray``, and can't be mixed with local paths."""
    from agetool.errors import UsageError
    from agetool.locations import is_uri, list_photos, local_path

    uri = next(i for i in inputs if is_uri(i))
    if engine != "ray":
        raise UsageError(f"{uri}: a URI is read by --engine ray only", hint="add --engine ray, or copy the photos here")
    if not all(map(is_uri, inputs)):
        raise UsageError("give URIs and local paths in separate runs")
    listed = [list_photos(i, timeout) for i in inputs]
    photos = [p for found in listed for p in found]
    if not photos:
        raise UsageError(f"no images found at {', '.join(inputs)}")
    several = len(photos) > 1 or any(found != [i] for i, found in zip(inputs, listed))
    return photos, several, [p for p in map(local_path, photos) if p is not None]


def uri_targets(stems: list[str], out: str, several: bool, suffix: str, inputs: list) -> list[str]:
    """The output of each input for an ``--out`` URI: the URI itself for one input when it names an
    image file, else ``<out>/<stem><suffix>`` per input; none of them may be an input."""
    from agetool.errors import UsageError, arg
    from agetool.images import IMAGE_SUFFIXES

    if not several and not out.endswith("/") and os.path.splitext(out)[1].lower() in IMAGE_SUFFIXES:
        targets = [out]
    else:
        targets = [f"{out.rstrip('/')}/{stem}{suffix}" for stem in stems]
    clash = set(targets) & set(map(str, inputs))
    if clash:
        raise UsageError(f"{arg('out', out)}: {sorted(clash)[0]} is an input; it would be overwritten",
                         hint="choose another output path")
    return targets


def age_on_ray(jobs, *, address, gpus, cpus, timeout: float, profile: bool, **kwargs) -> int:
    """``--engine ray``: the same files, made by a Ray Data job (agetool.ray); a line per photo done."""
    from agetool.cli.options import report
    from agetool.locations import check_writable, is_uri
    from agetool.ray import Job, age_photos

    def where(path) -> str:
        return path if is_uri(str(path)) else os.path.abspath(path)

    jobs = [Job(where(p), where(t), "" if d is None else where(d)) for p, t, d in jobs]
    # outputs in object storage: each folder written to once before any work (a probe object)
    for folder in sorted({j.grid.rsplit("/", 1)[0] for j in jobs} | {j.tiles for j in jobs if j.tiles}):
        check_writable(folder, timeout)
    summary = age_photos(jobs, address=address, gpus=gpus, cpus=cpus, timeout=timeout, report=report,
                         verbose=console.DEBUG, stats=profile, **kwargs)
    for _, error in summary.failed:
        console.error(console.message(error))
    if profile:
        console.info(f"Ray start-up: {summary.startup:.1f} s")
        if summary.stats:
            console.info(summary.stats.rstrip())
    if len(jobs) > 1 or summary.skipped:
        console.info(f"done: {len(summary.written)} written, {len(summary.failed)} failed, "
                     f"{len(summary.skipped)} skipped")
    return 1 if summary.failed else 0
