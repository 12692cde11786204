"""Folders of photos at cluster scale on Ray Data (``pip install "agetool[ray]"``).

``age_photos`` runs a whole job: one row per photo flows through three stages,

    FaceStage       read, detect, align, parse, mask, estimate, choose each face's model (CPU actors)
    GeneratorStage  encode and render every face at every age, paste back (actors, one GPU each)
    write_results   grid, tiles (CPU tasks)

and the stages overlap: faces of the next photos are found while the generator renders. Each actor
loads its models once; an actor whose process dies is restarted and its batch retried (Ray Data's
defaults for actor pools). A photo that fails (unreadable, no face) becomes a row with an error and the
job goes on; ``Summary.failed`` lists them. A photo whose grid exists is skipped, so a rerun of a
job that stopped finishes it. The outputs are those of ``agetool age`` on the same machine, byte
for byte (the actors use the same number of torch threads as a plain run).

The stages are building blocks for your own Ray Data job; rows carry ``photo`` (a local path or a
URI such as ``s3://bucket/me.jpg``, or add a ``bytes`` column as ``ray.data.read_binary_files``
gives), ``grid`` and ``tiles`` (output paths; ``""`` for none)::

    import ray
    from agetool.ray import FaceStage, GeneratorStage, write_results

    ds = ray.data.from_items([{"photo": "s3://bucket/me.jpg", "grid": "/shared/me_ages.png", "tiles": ""}])
    ds = ds.map_batches(FaceStage, fn_constructor_kwargs={"pipeline": {"model": "female"}},
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=8), num_cpus=1, batch_size=1)
    ds = ds.map_batches(GeneratorStage, fn_constructor_kwargs={"pipeline": {"model": "female"}},
                        compute=ray.data.ActorPoolStrategy(size=2), num_gpus=1, batch_size=1)
    ds = ds.map_batches(write_results, num_cpus=0, batch_size=1)
    for row in ds.iter_rows():
        print(row["photo"], row["error"] or row["grid"])
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from agetool import errors
from agetool.locations import exists, fetch, join, store

INSTALL_HINT = 'pip install "agetool[ray]"'

#: Columns of a job's rows. ``error`` is "" for a photo that went well, else one line saying what
#: failed; ``failure`` holds the same error in a form ``error_from`` turns back into the exception.
PHOTO, GRID, TILES, ERROR, FAILURE, NOTES = "photo", "grid", "tiles", "error", "failure", "notes"
PREPARED, RESULT = "prepared", "result"

#: The options of ``AgingPipeline.__call__`` that ``FaceStage`` applies (``AgingPipeline.prepare``'s);
#: ``GeneratorStage`` takes the others, and ``paste_back`` too.


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise errors.AgetoolError("running on Ray needs Ray Data, which is not installed",
                                  hint=INSTALL_HINT) from None
    return ray


@dataclass(frozen=True)
class Job:
    """One photo of a job: where it is (a path or a URI Ray's filesystems read) and what to write."""

    photo: str
    grid: str
    tiles: str = ""  # this photo's tile folder, "" for none

    def row(self) -> dict:
        return {PHOTO: str(self.photo), GRID: str(self.grid), TILES: str(self.tiles or "")}


@dataclass
class Summary:
    """What a job did: grids written, photos skipped (grid already there) and failed (with the error)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, errors.AgetoolError]] = field(default_factory=list)

    def table(self) -> list[dict]:
        """The failed photos as rows ``{"path": ..., "error": ...}``."""
        return [{"path": path, "error": str(error)} for path, error in self.failed]


# ---------------------------------------------------------------- errors across processes
def _error_fields(e: errors.AgetoolError) -> str:
    """An agetool error as text that survives any serialization: class, message, hint."""
    return "\x00".join((type(e).__name__, e.message, e.hint or ""))


def error_from(text: str) -> errors.AgetoolError:
    """The agetool error that ``text`` (a ``failure`` column) describes."""
    name, message, hint = (text.split("\x00") + ["", ""])[:3]
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.AgetoolError)):
        cls = errors.AgetoolError
    e = cls.__new__(cls)
    errors.AgetoolError.__init__(e, message, hint=hint or None)
    return e


def _rows(batch: dict) -> list[dict]:
    n = len(next(iter(batch.values()))) if batch else 0
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def _batch(rows: list[dict], columns: Sequence[str]) -> dict[str, np.ndarray]:
    out = {}
    for c in columns:
        values = [r.get(c, b"" if c in (PREPARED, RESULT) else "") for r in rows]
        out[c] = np.array(values, dtype=object)
    return out


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))


class _Stage:
    """A pipeline made once per actor; its notices are kept and handed on with the next row."""

    device: str | None = None  # a stage's own device, whatever the pipeline options say

    def __init__(self, pipeline: dict | None = None, threads: int | None = None):
        from agetool.pipeline import AgingPipeline

        _set_threads(threads)
        options = dict(pipeline or {})
        if self.device is not None:
            options["device"] = self.device
        self._notes: list[str] = []
        self.pipe = AgingPipeline.from_pretrained(**options, report=self._notes.append)

    def _take_notes(self, row: dict) -> dict:
        earlier = _text(row.get(NOTES, ""))
        row[NOTES] = "\n".join(n for n in (earlier, *self._notes) if n)
        self._notes.clear()
        return row


def _read(row: dict, max_pixels: int):
    """(photo, sha256 of its bytes or None) of a row: a local path as it is (read as ``agetool age``
    reads it), else the array decoded from the row's ``bytes`` or from the URI's filesystem."""
    from agetool.images import read_image

    photo = _text(row[PHOTO])
    data = row.get("bytes")
    if data is None and "://" not in photo:
        return photo, None
    if data is None:
        data = fetch(photo)
    import hashlib

    data = bytes(data)  # its sha256 names the photo in the outputs' records, as the plain run's does
    return read_image(photo, max_pixels, data=data), hashlib.sha256(data).hexdigest()


def _fail(row: dict, e: errors.AgetoolError) -> None:
    """Mark ``row`` failed with ``e`` (whose message then names the photo)."""
    photo = _text(row[PHOTO])
    if photo not in e.message:
        e.message = f"{photo}: {e.message}"
    row[ERROR], row[FAILURE] = str(e), _error_fields(e)


class FaceStage(_Stage):
    """Ray Data stage: each row's photo read, its faces found, aligned, parsed and masked, their age
    and gender estimated and each face's generator chosen: all CPU work, models loaded once per actor.

    Use it with ``Dataset.map_batches(FaceStage, fn_constructor_kwargs=..., num_cpus=1, batch_size=...)``.
    Rows need ``photo`` (and may carry ``bytes``; ``path`` and ``bytes``, as
    ``ray.data.read_binary_files(..., include_paths=True)`` makes them, do too); each comes out with ``prepared`` (the faces, for
    ``GeneratorStage``), ``error`` ("" or what failed, one line), ``failure`` and ``notes`` (the
    pipeline's notices). Rows that failed in an earlier stage pass through untouched.

    Args:
        pipeline: keyword arguments of ``AgingPipeline.from_pretrained`` (model, weights, ...); this
            stage runs on the CPU whatever ``device`` says.
        request: the job's ``AgeRequest`` (``job_request``); this stage takes its face options.
        threads: torch threads of this actor (default: Ray's, one per CPU it holds).
    """

    device = "cpu"

    def __init__(self, pipeline: dict | None = None, *, request=None, ages=None, options: dict | None = None,
                 threads: int | None = None):
        from dataclasses import fields

        super().__init__(pipeline, threads)
        request = request or job_request(ages, options)
        self.options = {f.name: getattr(request.face, f.name) for f in fields(request.face)} | {
            "estimate": True if request.render.relative else "auto"}

    def __call__(self, batch: dict) -> dict:
        rows = []
        for row in _rows(batch):
            row = dict(row)
            if PHOTO not in row:  # rows of ray.data.read_binary_files(..., include_paths=True)
                row[PHOTO] = row.get("path", "")
            if not _text(row.get(ERROR, "")):
                try:
                    photo, digest = _read(row, self.pipe.max_pixels)
                    prepared = self.pipe.prepare(photo, **self.options)
                    prepared.name = _text(row[PHOTO])
                    prepared.source_sha256 = digest or prepared.source_sha256
                    row[PREPARED], row[ERROR] = pickle.dumps(prepared), ""
                except errors.AgetoolError as e:
                    if e.exit_code != 1:
                        raise
                    _fail(row, e)
            row.pop("bytes", None)
            rows.append(self._take_notes(row))
        return _batch(rows, _columns(rows))


class GeneratorStage(_Stage):
    """Ray Data stage: the faces ``FaceStage`` prepared, encoded once and rendered at every age
    (then pasted back when asked), on the GPU the actor holds (or the CPU); the generator loads once
    per actor. Rows come out with ``result`` (an ``AgingResult``, pickled; ``write_results`` writes it).

    Use it with ``Dataset.map_batches(GeneratorStage, fn_constructor_kwargs=..., num_gpus=1,
    compute=ray.data.ActorPoolStrategy(size=GPUS), batch_size=...)``.

    Args:
        pipeline: keyword arguments of ``AgingPipeline.from_pretrained`` (as given to ``FaceStage``).
        request: the job's ``AgeRequest`` (as given to ``FaceStage``).
        threads: torch threads of this actor (default: Ray's).
    """

    def __init__(self, pipeline: dict | None = None, *, request=None, ages=None, options: dict | None = None,
                 threads: int | None = None):
        from dataclasses import replace

        super().__init__(pipeline, threads)
        request = request or job_request(ages, options)
        # the faces were found by FaceStage: only paste-back of the face options applies here
        self.request = replace(request, face=type(request.face)(paste_back=request.face.paste_back))

    def __call__(self, batch: dict) -> dict:
        rows = []
        for row in _rows(batch):
            row = dict(row)
            if not _text(row.get(ERROR, "")):
                try:
                    photo = pickle.loads(row[PREPARED])
                    result = self.pipe.age(photo, self.request)
                    row[RESULT] = pickle.dumps(result)
                except errors.AgetoolError as e:
                    if e.exit_code != 1:
                        raise
                    _fail(row, e)
            row.pop(PREPARED, None)
            rows.append(self._take_notes(row))
        return _batch(rows, _columns(rows))


def write_results(batch: dict, *, labels: bool = True) -> dict:
    """Ray Data stage (a function): each row's ``result`` written as its ``grid`` (with age captions
    unless ``labels=False``) and, where ``tiles`` names a folder, every tile there: the files
    ``agetool age`` writes, byte for byte. Tiles come first, so a grid on disk means a finished photo.
    Rows come out with ``photo``, ``grid``, ``error``, ``failure``, ``notes``, ``faces`` and ``models``."""
    rows = []
    for row in _rows(batch):
        out = {PHOTO: _text(row[PHOTO]), GRID: _text(row[GRID]), ERROR: _text(row.get(ERROR, "")),
               FAILURE: _text(row.get(FAILURE, "")), NOTES: _text(row.get(NOTES, "")), "faces": 0, "models": ""}
        if not out[ERROR]:
            try:
                result = pickle.loads(row[RESULT])
                if _text(row.get(TILES, "")):
                    for name, data in result.tile_files():
                        store(join(_text(row[TILES]), name), data)
                store(out[GRID], result.encode_grid(out[GRID], labels=labels))
                out["faces"] = len(result.faces)
                out["models"] = ", ".join(sorted({f.model for f in result.faces}))
            except errors.AgetoolError as e:
                if e.exit_code != 1:
                    raise
                _fail(out, e)
        rows.append(out)
    return _batch(rows, [PHOTO, GRID, ERROR, FAILURE, NOTES, "faces", "models"])


def _columns(rows: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        seen.update(dict.fromkeys(r))
    return list(seen)


# ---------------------------------------------------------------- a whole job
def job_request(ages=None, options: dict | None = None):
    """The job's ``AgeRequest``: ``ages`` and ``options`` (keyword arguments of ``AgingPipeline.__call__``),
    checked once on the driver and handed to every actor; stages made without one make their own."""
    from agetool.options import AgeRequest, request

    if isinstance(ages, AgeRequest):
        return ages
    return request(ages, **(options or {}))


def default_threads() -> int:
    """The torch threads of a plain ``agetool age`` run on this machine (the stages use as many, so
    the outputs match it byte for byte: float sums depend on how work is split between threads)."""
    import torch

    return torch.get_num_threads()


def age_photos(jobs: Sequence[Job], *, pipeline: dict | None = None, ages=None, labels: bool = True,
               options: dict | None = None, address: str | None = None,
               cpus: int | None = None, gpus: int | None = None, threads: int | None = None,
               batch_size: int = 1, skip_existing: bool = True,
               report: Callable[[str], None] | None = None) -> Summary:
    """Age ``jobs`` on Ray Data; returns the ``Summary`` (failed photos don't stop the job).

    Args:
        jobs: the photos and their outputs.
        pipeline: keyword arguments of ``AgingPipeline.from_pretrained`` (model, weights, device, ...).
        ages: as for ``AgingPipeline.__call__``; ``labels``: age captions on the grids.
        options: keyword arguments of ``AgingPipeline.__call__`` (aligned, mask, paste_back, faces,
            min_face, seed, noise, ...).
        address: the Ray cluster to join (``"auto"``, ``"ray://host:10001"``, ...; default: the one
            ``RAY_ADDRESS`` names, else a Ray started on this machine for the job and stopped after).
            Ray already running in this process is used as it is.
        cpus: CPUs the job uses (default: all of the cluster's); a Ray started here gets this many.
        gpus: GPUs, one generator actor each (default: all of the cluster's); 0 runs one generator
            actor on a CPU.
        threads: torch threads per actor (default: ``default_threads()``).
        batch_size: photos per batch handed to each stage.
        skip_existing: skip photos whose grid exists (a rerun finishes a stopped job).
        report: receives the pipeline's notices, one line each.
    """
    from agetool import validate

    ray = _ray()
    for name, value in (("cpus", cpus), ("gpus", gpus), ("threads", threads)):
        if value is not None:
            validate.integer(name, value, low=0 if name == "gpus" else 1, high=1 << 20)
    batch_size = validate.integer("batch_size", batch_size, low=1, high=4096)
    report = report or (lambda message: None)
    summary = Summary()
    todo = []
    for job in jobs:
        (summary.skipped if skip_existing and exists(job.grid) else todo).append(job)
    if not todo:
        return summary
    started = not ray.is_initialized()
    if started:
        _start(ray, address, cpus)
    try:
        ds = build_dataset(ray, todo, pipeline=pipeline, ages=ages, labels=labels, options=options, cpus=cpus,
                           gpus=gpus, threads=default_threads() if threads is None else threads,
                           batch_size=batch_size)
        for row in ds.iter_rows():
            for note in filter(None, _text(row[NOTES]).split("\n")):
                report(note)
            if row[ERROR]:
                summary.failed.append((row[PHOTO], error_from(row[FAILURE])))
            else:
                summary.written.append(row[PHOTO])
                report(f"{row[PHOTO]} -> {row[GRID]}  ({row['faces']} face{'s' if row['faces'] != 1 else ''}, "
                       f"{row['models']} model)")
    finally:
        if started:
            ray.shutdown()
    return summary


def _start(ray, address: str | None, cpus: int | None) -> None:
    address = address or os.environ.get("RAY_ADDRESS") or None
    options = dict(include_dashboard=False, log_to_driver=True, logging_level="warning")
    if address is None:  # a Ray of our own, on this machine, with the GPUs it finds
        options.update(num_cpus=cpus)
    ray.init(address=address, **options)


def build_dataset(ray, jobs: Sequence[Job], *, pipeline: dict | None, ages, labels: bool, options: dict | None,
                  cpus: int | None, gpus: int | None, threads: int | None, batch_size: int):
    """The job's dataset (lazy): rows of ``jobs`` -> FaceStage -> GeneratorStage -> write_results;
    ``ages`` and ``options`` become the job's one request (``job_request``), handed to every actor."""
    request = job_request(ages, options)
    resources = ray.cluster_resources()
    has_gpus, has_cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if gpus is not None and gpus > has_gpus:
        raise errors.UsageError(f"{errors.arg('gpus', gpus)}: the Ray cluster has {has_gpus} GPU(s)",
                                hint="start Ray with more GPUs, or ask for fewer")
    gpus = has_gpus if gpus is None else gpus
    cpus = has_cpus if cpus is None else min(cpus, has_cpus)
    generators = max(1, gpus)
    # each actor holds one CPU, or a share where there are fewer CPUs than actors (never waits forever)
    unit = min(1.0, cpus / (generators + 1))
    face_workers = max(1, int((cpus - generators * unit) / unit + 1e-9))
    ds = ray.data.from_items([job.row() for job in jobs], override_num_blocks=len(jobs))
    ds = ds.map_batches(FaceStage, batch_size=batch_size, batch_format="numpy", num_cpus=unit,
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=face_workers),
                        fn_constructor_kwargs=dict(pipeline=pipeline, request=request, threads=threads))
    ds = ds.map_batches(GeneratorStage, batch_size=batch_size, batch_format="numpy", num_cpus=unit,
                        num_gpus=1 if gpus else 0, compute=ray.data.ActorPoolStrategy(size=generators),
                        fn_constructor_kwargs=dict(pipeline=pipeline, request=request, threads=threads))
    # writing is light (PNG encoding, I/O): it takes no CPU of its own, so it never waits on the actors
    return ds.map_batches(write_results, batch_size=batch_size, batch_format="numpy", num_cpus=0,
                          compute=ray.data.TaskPoolStrategy(size=max(1, face_workers)),
                          fn_kwargs=dict(labels=labels))
