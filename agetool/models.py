"""The model set under ``AgingPipeline``: every model loaded once, on first use, thread-safe, with
load times counted by a ``Timer``. Siblings (``AgingPipeline.from_pipe``) share one ``Models``.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from pathlib import Path

from agetool.loading import LOADING, Loading

if TYPE_CHECKING:  # annotations only
    from agetool.provenance import ModelUse

#: the name prefix of the threads that load models in the background
LOADER_PREFIX = "agetool-load-"


def loading_in_background() -> list[threading.Thread]:
    """The model loads still running in background threads, in any ``Models`` of this process."""
    return [t for t in threading.enumerate() if t.name.startswith(LOADER_PREFIX) and t.is_alive()]

MODELS = ("auto", "male", "female")
LANDMARKS = ("auto", "fan", "dlib")


def check_model(model, argument: str = "model") -> str | Path:
    """A pipeline's generator choice: ``"auto"``, ``"male"``, ``"female"``, or the ``Path`` of a
    generator file given as a str or PathLike (``argument``: the argument it came in as)."""
    from agetool.errors import CheckpointError, UsageError, arg

    if isinstance(model, str) and model in MODELS:
        return model
    expected = f"expected {', '.join(MODELS)} or the path of a generator file"
    if not isinstance(model, (str, os.PathLike)) or not os.fspath(model):
        raise UsageError(f"{arg(argument, model)}: {expected}")
    path = Path(model)
    if path.is_file():
        return path
    if isinstance(model, str) and not path.suffix and len(path.parts) == 1:  # a word, not a path: a typo
        raise UsageError(f"{arg(argument, model)}: {expected}")
    raise CheckpointError(f"{arg(argument, path)}: no such file", hint="check the path")


def pretrained_model(model, weights=None) -> str | Path:
    """``AgingPipeline.from_pretrained``'s generator: ``model``, or the file of the deprecated
    ``weights`` argument (which warns, and wins over a ``model`` choice as it did)."""
    choice = check_model(model)
    if weights is None:
        return choice
    import warnings

    from agetool.errors import UsageError, arg

    warnings.warn("AgingPipeline.from_pretrained(weights=PATH) is deprecated: pass the generator file as "
                  "model=PATH", DeprecationWarning, stacklevel=3)
    if isinstance(choice, Path):
        raise UsageError(f"give the generator file as {arg('model')} or {arg('weights')}, not both")
    return check_model(weights, "weights")


class Timer:
    """Seconds per stage, each counted once: a stage timed inside another (a model loading on
    first use during "parse") is taken out of the outer one. ``clock``: seconds as a float (a test
    hands in its own)."""

    def __init__(self, device=None, clock=time.perf_counter):
        self.device = device
        self.clock = clock
        self.seconds: dict[str, float] = defaultdict(float)
        self._local = threading.local()

    @property
    def background(self) -> bool:
        """Whether this thread loads models in the background (its stages overlap the caller's)."""
        return getattr(self._local, "background", False)

    @background.setter
    def background(self, on: bool) -> None:
        self._local.background = on

    @contextmanager
    def __call__(self, stage: str):
        stack = self._local.__dict__.setdefault("stack", [])
        t0 = self.clock()
        stack.append(0.0)  # time spent in nested stages
        try:
            yield
        finally:
            if self.device is not None and getattr(self.device, "type", "") == "cuda":
                import torch

                torch.cuda.synchronize(self.device)
            total = self.clock() - t0
            nested = stack.pop()
            self.seconds[stage + (" (background)" if self.background else "")] += total - nested
            if stack:
                stack[-1] += total

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds
        stack = getattr(self._local, "stack", None)
        if stack:
            stack[-1] += seconds


@dataclass
class Models:
    """Everything a pipeline loads, once, on first use (thread-safe); ``timer`` counts load times.
    Generators are named ``"male"`` / ``"female"`` (the registry's) or by their file (``add_generator``)."""

    parser_weights: Path | None = None
    classifier_weights: Path | None = None
    landmarks: str = "auto"
    device: object = None
    dtype: object = None
    batch: int | None = None
    loading: Loading = LOADING  # offline, progress and report of every model file fetched
    timer: Timer = field(default_factory=Timer)
    upscale_weights: Path | str | None = None  # a super-resolution file or registered name (None: the default)

    def __post_init__(self):
        self._lock = threading.RLock()
        self._loaded: dict[str, object] = {}
        self._loading: dict[str, threading.RLock] = {}  # one lock per model: models load side by side
        self._background: dict[str, threading.Thread] = {}
        self._closed = threading.Event()
        self._files: dict[str, Path] = {}  # own generator files by the name their faces carry

    def add_generator(self, path: str | os.PathLike) -> str:
        """The name of generator file ``path`` in this model set: its file name (the whole path where
        that name is taken by another file, or is "male", "female" or "auto")."""
        path = Path(path)
        with self._lock:
            for name in (path.name, str(path.absolute())):
                if name not in MODELS and self._files.setdefault(name, path) == path:
                    return name
            raise ValueError(f"{path}: two generator files of one name")  # pragma: no cover - a path is unique

    def _once(self, key: str, stage: str, load: Callable[[], object]):
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
            lock = self._loading.setdefault(key, threading.RLock())
        with lock:  # waits here while a background thread loads this model
            if key not in self._loaded:
                with self.timer(stage):
                    value = load()
                with self._lock:
                    self._loaded[key] = value
            return self._loaded[key]

    def preload(self, *, parser: bool = False, model: str | None = None) -> None:
        """Start loading the parser and the generator of ``model`` in background threads, while the
        caller reads the photo and finds its faces (they don't depend on each other). Their load
        times then count under "load parser (background)" / "load generator (background)"; the
        caller's wait, if any, under the stage that needed the model. A failed background load is
        repeated, and its error raised, where the model is first needed."""
        jobs = {}
        if parser and (self.parser_weights is not None or self._at_hand("deeplab-parser")):
            jobs["parser"] = lambda: self.parser
        if model in self._files or model in ("male", "female") and self._at_hand(f"lats-{model}"):
            jobs[f"engine:{model}"] = lambda: self.engine(model)
        for key, job in jobs.items():
            with self._lock:
                if self._closed.is_set() or key in self._loaded or key in self._background:
                    continue
                # not a daemon: an interpreter that exits mid-load waits for it, where a daemon thread
                # stopped inside torch's C++ code would abort the whole process
                thread = threading.Thread(target=self._quietly, args=(job,), name=f"{LOADER_PREFIX}{key}")
                self._background[key] = thread
            thread.start()

    def close(self, timeout: float | None = None) -> bool:
        """Start no more background loads and wait up to ``timeout`` seconds (None: until done) for
        the running ones; True when none is left running. Models already loaded stay usable."""
        self._closed.set()
        with self._lock:
            threads = list(self._background.values())
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    @staticmethod
    def _at_hand(name: str) -> bool:
        """Whether registry file ``name`` is cached and verified: loading it in the background never
        downloads (a download shows its progress where the model is needed)."""
        try:
            from agetool import weights

            return bool(weights.status(name).verified)
        except Exception:  # noqa: BLE001 - unknown name, unreadable record: load it when needed
            return False

    def _quietly(self, job: Callable[[], object]) -> None:
        if self._closed.is_set():
            return
        self.timer.background = True
        try:
            job()
        except BaseException:  # noqa: BLE001 - repeated, and raised, where the model is needed
            pass

    @property
    def detector(self):
        def load():
            from agetool.face.detect import LandmarkDetector

            detector = LandmarkDetector.create(self.landmarks, device=self.device, loading=self.loading)
            self.loading.say(f"landmarks: {detector.name}")
            return detector

        return self._once("detector", "load landmarks", load)

    @property
    def parser(self):
        def load():
            from agetool.face.parse import FaceParser

            return FaceParser.load(self.parser_weights, device=self.device, loading=self.loading)

        return self._once("parser", "load parser", load)

    @property
    def classifier(self):
        """The gender / age classifier; ``ModelChoiceError`` when it can't be had."""
        def load():
            from agetool.face.gender import GenderClassifier

            return GenderClassifier.load(self.classifier_weights, loading=self.loading)

        return self._once("classifier", "load classifier", load)

    def classifier_if_available(self):
        """The classifier when it is loaded or can be had without a download; else None."""
        with self._lock:
            if "classifier" in self._loaded:
                return self._loaded["classifier"]
            if self._loaded.get("classifier-missing"):
                return None
            if self.classifier_weights is not None:  # a file given by name: its errors are the user's to see
                return self.classifier
            from agetool.errors import AgetoolError
            from agetool.face.gender import classifier_available

            if classifier_available(self.classifier_weights):
                try:
                    return self.classifier
                except AgetoolError:
                    pass
            self._loaded["classifier-missing"] = True
            return None

    @property
    def identity(self):
        """dlib's face descriptor (``agetool.identity.FaceIdentity``), for scoring noise draws: its files
        ship with agetool's dependencies, so nothing is downloaded."""
        def load():
            from agetool.identity import FaceIdentity

            return FaceIdentity.from_pretrained("dlib", argument="candidates")

        return self._once("identity", "load identity", load)

    @property
    def upscaler(self):
        """The super-resolution network (``agetool.upscale.Upscaler``) for ``upscale=2|4``."""
        def load():
            from agetool.upscale import load_upscaler

            return load_upscaler(self.upscale_weights, device=self.device, loading=self.loading)

        return self._once("upscaler", "load upscaler", load)

    def engine(self, model: str):
        """The ``AgingEngine`` of generator ``model`` ('male', 'female' or a file's name)."""
        def load():
            from agetool.engine import AgingEngine, default_chunk
            from agetool.nn.checkpoint import load_generator

            path = self._files.get(model) or self._registry_generator(model)
            generator = load_generator(path, device=self.device)
            return AgingEngine(generator, self.device, self.dtype,
                               chunk=self.batch or default_chunk(self.device, self.dtype))

        return self._once(f"engine:{model}", "load generator", load)

    def _registry_generator(self, model: str) -> Path:
        from agetool import weights

        return weights.generator_path(f"lats-{model}", loading=self.loading)

    def used(self, generators=None, *, landmarks: bool | None = None, parser: bool | None = None,
             classifier: bool | None = None, upscaler: bool | None = None) -> tuple:
        """``agetool.provenance.ModelUse`` of the models that shaped an output: the generators of
        ``generators`` ('male', 'female' or files' names), the landmark model, face parser, classifier and
        upscaler where their flag is true. What is None is read from the models loaded so far (a
        run that knows what it used says so: its record is then the same in every process)."""
        with self._lock:
            loaded = set(self._loaded)
        if generators is None:
            generators = sorted(k.split(":", 1)[1] for k in loaded if k.startswith("engine:"))
        pick = lambda flag, key: key in loaded if flag is None else flag  # noqa: E731
        out = [own_model(self._files[g], "generator") if g in self._files else registry_model(f"lats-{g}")
               for g in dict.fromkeys(generators)]
        if pick(landmarks, "detector"):
            backend = self.landmarks
            if backend == "auto":
                from agetool.weights.places import fan_files_present

                backend = "fan" if fan_files_present() else "dlib"
            out += [registry_model(f) for f in (("fan-2d", "s3fd") if backend == "fan" else ("dlib-landmarks68",))]
        if pick(parser, "parser"):
            out.append(own_model(self.parser_weights, "face parser") if self.parser_weights is not None
                       else registry_model("deeplab-parser"))
        if pick(classifier, "classifier"):
            out.append(own_model(self.classifier_weights, "age classifier") if self.classifier_weights is not None
                       else registry_model("genderage"))
        if pick(upscaler, "upscaler"):
            given = self.upscale_weights
            out.append(own_model(given, "upscaler") if given is not None and Path(given).is_file()
                       else registry_model(str(given or "realesr-general-x4v3")))
        return tuple(out)

    def anchors(self, model: str, noise: float, seed: int):
        """The six class latents [6, 256] of ``model`` for this seed and noise."""
        key = f"anchors:{model}:{noise!r}:{seed}"
        return self._once(key, "latents", lambda: self.engine(model).anchor_latents(noise, seed))


_own_digests: dict[tuple, str] = {}


def registry_model(name: str) -> ModelUse:
    """A registry file's name, sha256 (recorded when it was verified, or published) and licence."""
    from agetool import weights
    from agetool.errors import AgetoolError
    from agetool.provenance import ModelUse

    try:
        art = weights.get(name)
    except AgetoolError:
        return ModelUse(name, None, "unknown")
    try:
        st = weights.status(name)
        sha = st.record.get("sha256") or art.sha256
        copy = st.path or st.bundled
    except AgetoolError:
        sha, copy = art.sha256, None
    if sha is None and copy is not None:  # a bundled copy, or one with a published md5 only: hashed once
        sha = own_model(copy, "").sha256
    return ModelUse(name, sha, art.license or "unknown", bool(art.non_commercial))


def own_model(path: str | os.PathLike, kind: str) -> ModelUse:
    """A model file given by path: named by its kind (``own generator``), never by its path; its
    sha256 (hashed once per file and process); its licence is the file owner's to know."""
    from agetool.provenance import ModelUse, source_sha256

    path = Path(path)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        return ModelUse(f"own {kind}", None, "not in the registry")
    if key not in _own_digests:
        _own_digests[key] = source_sha256(path) or ""
    return ModelUse(f"own {kind}", _own_digests[key] or None, "not in the registry")
