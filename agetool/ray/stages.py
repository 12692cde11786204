"""The Ray Data stages of a job: callables on batches (dicts of numpy columns), one pipeline per actor.

Rows are columns of plain types: strings for paths, URIs and messages, integers for counts. The
hand-off from ``FaceStage`` to ``GeneratorStage`` (GPU clusters) and on to ``write_results`` carries
the prepared faces and the results as numeric columns: their arrays (photo, crops, masks, features,
tiles) as one uint8 column of raw bytes with an int64 column of their sizes, which Ray's object store
holds without pickling, beside a small pickled column of everything else (``pack`` / ``unpack``).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence

import numpy as np

from agetool import errors
from agetool.locations import DEFAULT_TIMEOUT, fetch, join, store
from agetool.results import model_words

#: Columns of a job's rows. ``error`` is "" for a photo that went well, else one line saying what
#: failed; ``failure`` holds the same error in a form ``error_from`` turns back into the exception.
PHOTO, GRID, TILES, ERROR, FAILURE, NOTES = "photo", "grid", "tiles", "error", "failure", "notes"
PREPARED, RESULT, FACES, MODELS = "prepared", "result", "faces", "models"
BINARY = (PREPARED, RESULT)
#: the numeric columns beside a packed column: its arrays' bytes and their sizes
DATA, SIZES = "_data", "_sizes"
NUMERIC = tuple(c + suffix for c in BINARY for suffix in (DATA, SIZES))
#: the columns ``write_results`` and ``FusedStage`` give back
OUTPUT = (PHOTO, GRID, ERROR, FAILURE, NOTES, FACES, MODELS)


def job_request(ages=None, options: dict | None = None):
    """The ``AgeRequest`` of a job: ``ages`` and ``options`` (keyword arguments of
    ``AgingPipeline.__call__``) checked, and the ages parsed, once; an ``AgeRequest`` passes as it is."""
    from agetool.options import AgeRequest, request

    if isinstance(ages, AgeRequest):
        return ages
    return request(ages, **(options or {}))


# ---------------------------------------------------------------- errors across processes
def _error_fields(e: errors.AgetoolError) -> str:
    """An agetool error as text that survives any serialization: class, message, hint."""
    import json

    return json.dumps([type(e).__name__, e.message, e.hint or ""])


def error_from(text: str) -> errors.AgetoolError:
    """The agetool error that ``text`` (a ``failure`` column) describes."""
    import json

    try:
        name, message, hint = (list(json.loads(text)) + ["", "", ""])[:3]
    except (ValueError, TypeError):
        name, message, hint = "", str(text), ""
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.AgetoolError)):
        cls = errors.AgetoolError
    e = cls.__new__(cls)
    errors.AgetoolError.__init__(e, message, hint=hint or None)
    return e


def _fail(row: dict, e: errors.AgetoolError) -> None:
    """Mark ``row`` failed with ``e`` (whose message then names the photo)."""
    photo = _text(row[PHOTO])
    if photo not in e.message:
        e.message = f"{photo}: {e.message}"
    row[ERROR], row[FAILURE] = str(e), _error_fields(e)


# ---------------------------------------------------------------- packed objects
def pack(obj, row: dict, column: str) -> None:
    """``obj`` into ``row`` as three columns: ``column`` (the pickle, without the arrays' data),
    ``column_data`` (uint8: the bytes of every array, one after another) and ``column_sizes`` (int64:
    the byte size of each)."""
    buffers: list[pickle.PickleBuffer] = []
    row[column] = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    views = [b.raw() for b in buffers]
    row[column + SIZES] = np.array([v.nbytes for v in views], dtype=np.int64)
    row[column + DATA] = np.frombuffer(b"".join(views), dtype=np.uint8) if views else np.zeros(0, np.uint8)


def unpack(row: dict, column: str):
    """The object ``pack`` put in ``row``; its arrays are writable copies of the numeric columns."""
    data = np.asarray(row.get(column + DATA, np.zeros(0, np.uint8)), dtype=np.uint8).ravel()
    ends = np.cumsum(np.asarray(row.get(column + SIZES, np.zeros(0, np.int64)), dtype=np.int64).ravel())
    buffers = [bytearray(data[a:b].tobytes()) for a, b in zip([0, *ends[:-1]], ends)]
    return pickle.loads(bytes(row[column]), buffers=buffers)


# ---------------------------------------------------------------- batches
def _rows(batch: dict) -> list[dict]:
    n = len(next(iter(batch.values()))) if batch else 0
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def _column(name: str, values: list) -> np.ndarray:
    if name in NUMERIC:  # one array per row, of its own length
        out = np.empty(len(values), dtype=object)
        out[:] = [np.asarray(v) if isinstance(v, np.ndarray) else np.zeros(0, np.int64 if name.endswith(SIZES)
                                                                             else np.uint8) for v in values]
        return out
    if name in BINARY or name == "bytes":
        out = np.empty(len(values), dtype=object)
        out[:] = [bytes(v) if v is not None else b"" for v in values]
        return out
    if name == FACES:
        return np.array([int(v) for v in values], dtype=np.int64)
    return np.array([_text(v) for v in values], dtype=str)


def _batch(rows: list[dict], columns: Sequence[str]) -> dict[str, np.ndarray]:
    return {c: _column(c, [r.get(c, b"" if c in BINARY else 0 if c == FACES else "") for r in rows])
            for c in columns}


def _columns(rows: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        seen.update(dict.fromkeys(r))
    return list(seen)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))


def _read(row: dict, max_pixels: int, timeout: float):
    """(photo, sha256 of its bytes or None) of a row: a local path as it is (read as ``agetool age``
    reads it), else the array decoded from the row's ``bytes`` or from the URI's filesystem."""
    import hashlib

    from agetool.images import read_image

    photo = _text(row[PHOTO])
    data = row.get("bytes")
    if data is None and "://" not in photo:
        return photo, None
    if data is None:
        data = fetch(photo, timeout)
    data = bytes(data)  # its sha256 names the photo in the outputs' records, as the plain run's does
    return read_image(photo, max_pixels, data=data), hashlib.sha256(data).hexdigest()


def _write(row: dict, result, labels: bool, timeout: float, signing=None, label: bool = False) -> dict:
    """``result`` written as the row's tiles and grid (tiles first: a grid there means a finished photo),
    each marked with the run's record as the plain run's files are, signed with ``signing`` (an
    ``agetool.credentials.Signing``) and with the visible "AI-aged" mark on pasted photos (``label``)
    where asked."""
    result.signing, result.label = signing, label
    if _text(row.get(TILES, "")):
        for name, data in result.tile_files():
            store(join(_text(row[TILES]), name), data, timeout)
    grid = _text(row[GRID])
    store(grid, result.encode_grid(grid, labels=labels), timeout)
    return {FACES: len(result.faces), MODELS: model_words(result.faces)}


def _output(row: dict) -> dict:
    return {PHOTO: _text(row[PHOTO]), GRID: _text(row[GRID]), ERROR: _text(row.get(ERROR, "")),
            FAILURE: _text(row.get(FAILURE, "")), NOTES: _text(row.get(NOTES, "")), FACES: 0, MODELS: ""}


# ---------------------------------------------------------------- stages
class _Stage:
    """A pipeline made once per actor; its notices are kept and handed on with the next row."""

    device: str | None = None  # a stage's own device, whatever the pipeline options say

    def __init__(self, pipeline: dict | None = None, threads: int | None = None, timeout: float = DEFAULT_TIMEOUT):
        from agetool.pipeline import AgingPipeline

        _set_threads(threads)
        options = dict(pipeline or {})
        if self.device is not None:
            options["device"] = self.device
        self.timeout = float(timeout)
        self._notes: list[str] = []
        self.pipe = AgingPipeline.from_pretrained(**options, report=self._notes.append)

    def _take_notes(self, row: dict) -> dict:
        earlier = _text(row.get(NOTES, ""))
        row[NOTES] = "\n".join(n for n in (earlier, *self._notes) if n)
        self._notes.clear()
        return row

    def _each(self, batch: dict, work) -> list[dict]:
        """``work(row)`` for each row that has not failed; a photo's own failure (exit code 1) marks
        its row, anything else (a usage error, a missing model) stops the job."""
        rows = []
        for row in _rows(batch):
            row = dict(row)
            if PHOTO not in row:  # rows of ray.data.read_binary_files(..., include_paths=True)
                row[PHOTO] = row.get("path", "")
            if not _text(row.get(ERROR, "")):
                try:
                    work(row)
                except errors.AgetoolError as e:
                    if e.exit_code != 1:
                        raise
                    _fail(row, e)
            rows.append(self._take_notes(row))
        return rows


class FaceStage(_Stage):
    """Ray Data stage: each row's photo read, its faces found, aligned, parsed and masked, their age
    and gender estimated and each face's generator chosen: all CPU work, models loaded once per actor.

    Use it with ``Dataset.map_batches(FaceStage, fn_constructor_kwargs=..., num_cpus=1, batch_size=...)``.
    Rows need ``photo`` (and may carry ``bytes``; ``path`` and ``bytes``, as
    ``ray.data.read_binary_files(..., include_paths=True)`` makes them, do too); each comes out with
    ``prepared`` (the faces, for ``GeneratorStage``), ``error`` ("" or what failed, one line),
    ``failure`` and ``notes`` (the pipeline's notices). Rows that failed in an earlier stage pass through.

    Args:
        pipeline: keyword arguments of ``AgingPipeline.from_pretrained`` (model, device, ...); this
            stage runs on the CPU whatever ``device`` says.
        request: the job's ``agetool.options.AgeRequest`` (built once, by the driver); this stage
            takes its face options (relative ages need each face's estimated age). Without it
            ``ages`` and ``options`` (keyword arguments of ``AgingPipeline.__call__``) make one.
        threads: torch threads of this actor (default: Ray's, one per CPU it holds); the outputs
            are the same whatever the number.
        timeout: seconds to wait for a photo at a URI.
    """

    device = "cpu"

    def __init__(self, pipeline: dict | None = None, *, request=None, ages=None, options: dict | None = None,
                 threads: int | None = None, timeout: float = DEFAULT_TIMEOUT):
        from dataclasses import fields

        super().__init__(pipeline, threads, timeout)
        request = request or job_request(ages, options)
        self.options = {f.name: getattr(request.face, f.name) for f in fields(request.face)}
        self.options["estimate"] = True if request.render.relative else "auto"

    def __call__(self, batch: dict) -> dict:
        def prepare(row: dict) -> None:
            photo, digest = _read(row, self.pipe.max_pixels, self.timeout)
            prepared = self.pipe.prepare(photo, **self.options)
            prepared.source_sha256 = digest or prepared.source_sha256
            prepared.name = _text(row[PHOTO])
            pack(prepared, row, PREPARED)

        rows = self._each(batch, prepare)
        for row in rows:
            row.pop("bytes", None)
        return _batch(rows, _columns(rows))


class GeneratorStage(_Stage):
    """Ray Data stage: the faces ``FaceStage`` prepared, encoded once and rendered at every age
    (then pasted back when asked), on the GPU the actor holds (or the CPU); the generator loads once
    per actor. Rows come out with ``result`` (an ``AgingResult``, packed: ``pack``; ``write_results`` writes it).

    Use it with ``Dataset.map_batches(GeneratorStage, fn_constructor_kwargs=..., num_gpus=1,
    compute=ray.data.ActorPoolStrategy(size=GPUS), batch_size=...)``.

    Args:
        pipeline: keyword arguments of ``AgingPipeline.from_pretrained`` (as given to ``FaceStage``).
        request: the job's ``agetool.options.AgeRequest`` (as given to ``FaceStage``); without it
            ``ages`` and ``options`` make one.
        threads: torch threads of this actor (default: Ray's).
    """

    def __init__(self, pipeline: dict | None = None, *, request=None, ages=None, options: dict | None = None,
                 threads: int | None = None, timeout: float = DEFAULT_TIMEOUT):
        from dataclasses import replace

        super().__init__(pipeline, threads, timeout)
        request = request or job_request(ages, options)
        # the faces were found by FaceStage: only paste-back of the face options applies here
        self.request = replace(request, face=type(request.face)(paste_back=request.face.paste_back))

    def __call__(self, batch: dict) -> dict:
        def render(row: dict) -> None:
            pack(self.pipe.age(unpack(row, PREPARED), self.request), row, RESULT)

        rows = self._each(batch, render)
        for row in rows:
            for column in (PREPARED, PREPARED + DATA, PREPARED + SIZES):
                row.pop(column, None)
        return _batch(rows, _columns(rows))


class FusedStage(_Stage):
    """Ray Data stage for CPU nodes: each row's photo read, aged and written in one actor (the face
    stages, the generator and ``write_results`` fused: nothing is handed between processes). Use one
    actor per CPU, each with one torch thread. Rows come out as ``write_results`` gives them.

    Args: as ``FaceStage``'s, and ``labels`` (age captions on the grids), ``signing`` and ``label``
    (as ``write_results``).
    """

    device = "cpu"

    def __init__(self, pipeline: dict | None = None, *, request=None, ages=None, options: dict | None = None,
                 threads: int | None = 1, labels: bool = True, timeout: float = DEFAULT_TIMEOUT, signing=None,
                 label: bool = False):
        from dataclasses import fields, replace

        super().__init__(pipeline, threads, timeout)
        self.request = request or job_request(ages, options)
        self.labels, self.signing, self.label = labels, signing, label
        # photos given as bytes: prepared, then rendered, as FaceStage and GeneratorStage do
        self.face_options = {f.name: getattr(self.request.face, f.name) for f in fields(self.request.face)} | {
            "estimate": True if self.request.render.relative else "auto"}
        self.rendering = replace(self.request, face=type(self.request.face)(paste_back=self.request.face.paste_back))

    def __call__(self, batch: dict) -> dict:
        def age(row: dict) -> None:
            photo, digest = _read(row, self.pipe.max_pixels, self.timeout)
            if digest is None:  # a local path: as the plain run reads it
                result = self.pipe.age(photo, self.request)
            else:
                prepared = self.pipe.prepare(photo, **self.face_options)
                prepared.source_sha256 = digest
                prepared.name = _text(row[PHOTO])
                result = self.pipe.age(prepared, self.rendering)
            row.update(_write(row, result, self.labels, self.timeout, self.signing, self.label))

        return _batch([{**_output(row), **{k: row[k] for k in (FACES, MODELS) if k in row}}
                       for row in self._each(batch, age)], OUTPUT)


def write_results(batch: dict, *, labels: bool = True, timeout: float = DEFAULT_TIMEOUT, signing=None,
                  label: bool = False) -> dict:
    """Ray Data stage (a function): each row's ``result`` written as its ``grid`` (with age captions
    unless ``labels=False``) and, where ``tiles`` names a folder, every tile there: the files
    ``agetool age`` writes, byte for byte. Tiles come first, so a grid on disk means a finished photo.
    ``signing`` (an ``agetool.credentials.Signing``) signs every file with C2PA Content Credentials;
    ``label`` writes the visible "AI-aged" mark on pasted photos. Rows come out with ``photo``, ``grid``, ``error``, ``failure``, ``notes``, ``faces`` and ``models``."""
    rows = []
    for row in _rows(batch):
        out = _output(row)
        if not out[ERROR]:
            try:
                out.update(_write(row, unpack(row, RESULT), labels, timeout, signing, label))
            except errors.AgetoolError as e:
                if e.exit_code != 1:
                    raise
                _fail(out, e)
        rows.append(out)
    return _batch(rows, OUTPUT)
