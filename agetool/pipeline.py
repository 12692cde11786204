"""Photo -> faces -> aligned crops -> masked -> generator -> tiles / frames.

One ``Pipeline`` per run: models (landmarks, parser, classifier, generators) load on first use and
are reused across every face and file of the run. Stages pass plain dataclasses.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agetool.ages import AGE_CLASSES, DEFAULT_NOISE
from agetool.errors import CheckpointError, ModelChoiceError, NoFaceError, UsageError
from agetool.images import DEFAULT_MAX_PIXELS, read_image, resize, to_tensor, to_uint8

GEN_SIZE = 256
Report = Callable[[str], None]


@dataclass
class Options:
    """Everything a user chooses for ``age`` and ``video`` (device and dtype come from the CLI)."""

    model: str = "auto"  # auto | male | female
    weights: Path | None = None  # a generator checkpoint; overrides --model
    parser_weights: Path | None = None
    landmarks: str = "auto"  # auto | fan | dlib
    offline: bool = False
    seed: int = 0
    noise: float = DEFAULT_NOISE
    aligned: bool = False
    mask: bool = True
    paste_back: bool = False
    faces: str = "all"  # all | largest
    min_face: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    batch: int | None = None  # frames decoded at once; None = chosen from memory

    def validate(self) -> None:
        if self.model not in ("auto", "male", "female"):
            raise UsageError(f"--model {self.model}: expected auto, male or female")
        if self.landmarks not in ("auto", "fan", "dlib"):
            raise UsageError(f"--landmarks {self.landmarks}: expected auto, fan or dlib")
        if self.faces not in ("all", "largest"):
            raise UsageError(f"--faces {self.faces}: expected all or largest")
        if self.noise < 0:
            raise UsageError("--noise must be >= 0")
        if self.paste_back and self.aligned:
            raise UsageError("--paste-back needs the original photo; drop --aligned")
        if self.batch is not None and self.batch < 1:
            raise UsageError("--batch must be >= 1")


@dataclass
class FaceCrop:
    index: int
    aligned: np.ndarray  # [S, S, 3] uint8: the aligned crop, the grid's "input" tile
    network_input: np.ndarray  # [256, 256, 3] uint8: what the generator sees (masked unless --no-mask)
    labels: np.ndarray | None = None  # [S, S] uint8 face-parsing classes, when parsed
    detection: object | None = None  # agetool.face.detect.DetectedFace, in photo pixels
    alignment: object | None = None  # agetool.face.align.AlignedFace, for paste-back


@dataclass
class Photo:
    path: Path
    image: np.ndarray  # [H, W, 3] uint8, EXIF orientation applied
    faces: list[FaceCrop] = field(default_factory=list)


@dataclass
class AgedFace:
    face: FaceCrop
    model: str  # which generator rendered it
    classes: np.ndarray  # [6, 256, 256, 3] uint8, youngest first


class Pipeline:
    def __init__(self, options: Options, device=None, dtype=None, report: Report | None = None,
                 progress=None):
        import torch

        options.validate()
        self.opts = options
        self.device = device or torch.device("cpu")
        self.dtype = dtype or torch.float32
        self.report = report or (lambda message: None)
        self.progress = progress
        self.timings: dict[str, float] = defaultdict(float)
        self._detector = None
        self._parser = None
        self._classifier = None
        self._engines: dict[str, object] = {}
        self._anchors: dict[str, object] = {}

    # ------------------------------------------------------------------ timing
    @contextmanager
    def timed(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                import torch

                torch.cuda.synchronize(self.device)
            self.timings[stage] += time.perf_counter() - t0

    # ------------------------------------------------------------------ models
    @property
    def detector(self):
        if self._detector is None:
            from agetool.face.detect import LandmarkDetector

            with self.timed("load landmarks"):
                self._detector = LandmarkDetector.create(self.opts.landmarks, device=self.device,
                                                         offline=self.opts.offline, report=self.report,
                                                         progress=self.progress)
            self.report(f"landmarks: {self._detector.name}")
        return self._detector

    @property
    def parser(self):
        if self._parser is None:
            from agetool.face.parse import FaceParser

            with self.timed("load parser"):
                self._parser = FaceParser.load(self.opts.parser_weights, device=self.device,
                                               offline=self.opts.offline, report=self.report,
                                               progress=self.progress)
        return self._parser

    def engine(self, model: str):
        """The AgingEngine for ``model`` ('male', 'female' or 'custom'), loaded once."""
        if model not in self._engines:
            from agetool.engine import AgingEngine
            from agetool.nn.checkpoint import load_generator

            with self.timed("load generator"):
                if model == "custom":
                    path = self.opts.weights
                else:
                    path = self._registry_generator(model)
                generator = load_generator(path, device=self.device)
                self._engines[model] = AgingEngine(generator, self.device, self.dtype,
                                                   chunk=self.opts.batch or default_chunk(self.device, self.dtype))
        return self._engines[model]

    def _registry_generator(self, model: str) -> Path:
        try:
            from agetool import weights
        except ImportError:
            raise CheckpointError("no generator weights given", hint="pass --weights latest_net_g_running.pth") from None
        return weights.generator_path(f"lats-{model}", offline=self.opts.offline, progress=self.progress,
                                      report=self.report)

    def anchors(self, model: str):
        """The six class latents [6, 256] of ``model`` with this run's seed and noise."""
        if model not in self._anchors:
            self._anchors[model] = self.engine(model).anchor_latents(self.opts.noise, self.opts.seed)
        return self._anchors[model]

    def choose_model(self, photo: Photo, face: FaceCrop) -> str:
        """'custom' with --weights, the user's --model, or the classifier's choice for this face."""
        if self.opts.weights is not None:
            return "custom"
        if self.opts.model != "auto":
            return self.opts.model
        if self._classifier is None:
            try:
                from agetool.face.gender import GenderClassifier

                with self.timed("load classifier"):
                    self._classifier = GenderClassifier.load(offline=self.opts.offline, report=self.report,
                                                             progress=self.progress)
            except ImportError:
                raise ModelChoiceError("can't choose the male or female model automatically",
                                       hint="pass --model male or --model female") from None
        with self.timed("classify"):
            gender, p = self._classifier.predict(photo.image, face)
        self.report(f"{photo.path.name} face {face.index}: {gender} model (auto, p = {p:.2f})")
        return gender

    # ------------------------------------------------------------------ stages
    def prepare(self, path: Path) -> Photo:
        """Read a photo and turn it into aligned, masked face crops (largest face first)."""
        with self.timed("read"):
            image = read_image(path, max_pixels=self.opts.max_pixels)
        photo = Photo(Path(path), image)
        if self.opts.aligned:
            crop = resize(image, GEN_SIZE) if image.shape[:2] != (GEN_SIZE, GEN_SIZE) else image
            photo.faces = [self._finish_face(0, crop, None, None)]
            return photo
        from agetool.face.align import align_face

        found = self.find_faces(image, photo.path)
        for i, det in enumerate(found):
            with self.timed("align"):
                aligned = align_face(image, det.landmarks, size=GEN_SIZE)
            photo.faces.append(self._finish_face(i, aligned.image, det, aligned))
        return photo

    def find_faces(self, image: np.ndarray, path: Path) -> list:
        """Detected faces of ``image`` (largest first), after --min-face and --faces; NoFaceError if none."""
        detector = self.detector
        before = dict(detector.timings)
        found = detector.detect(image)
        for stage, secs in detector.timings.items():  # "detect" and "landmarks"
            self.timings[stage] += secs - before.get(stage, 0.0)
        if self.opts.min_face > 0:
            kept = [f for f in found if min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= self.opts.min_face]
            if len(kept) < len(found):
                self.report(f"warning: {path.name}: skipped {len(found) - len(kept)} face(s) smaller than "
                            f"{self.opts.min_face} px")
            found = kept
        if not found:
            other = "fan" if detector.name.startswith("dlib") else "dlib"
            raise NoFaceError(f"no face found in {path}",
                              hint=f"try a larger, frontal photo, --landmarks {other}, or --aligned for a crop")
        if self.opts.faces == "largest":
            found = found[:1]
        return found

    def _finish_face(self, index: int, crop: np.ndarray, detection, alignment) -> FaceCrop:
        face = FaceCrop(index, crop, crop, detection=detection, alignment=alignment)
        if self.opts.mask or self.opts.paste_back:
            with self.timed("parse"):
                face.labels = self.parser.parse(crop)
        if self.opts.mask:
            from agetool.face.mask import mask_background

            face.network_input = mask_background(crop, face.labels)
        return face

    def age(self, photo: Photo) -> list[AgedFace]:
        """Render each face of ``photo`` at the six age classes."""
        results = []
        for face in photo.faces:
            model = self.choose_model(photo, face)
            engine = self.engine(model)
            with self.timed("encode"):
                feats = engine.encode(to_tensor(face.network_input))
            w = self.anchors(model)
            with self.timed("decode"):
                out = engine.decode(feats[0], w)
            results.append(AgedFace(face, model, to_uint8(out)))
        return results

    def paste(self, photo: Photo, face: FaceCrop, generated: np.ndarray, canvas: np.ndarray | None = None) -> np.ndarray:
        """The photo (or ``canvas``) with ``generated`` [256, 256, 3] blended back over ``face``."""
        from agetool.face.paste import paste_back

        with self.timed("paste"):
            return paste_back(photo.image if canvas is None else canvas, generated, face.alignment, face.labels)

    def frames(self, photo: Photo, steps: int) -> Iterator[list[np.ndarray]]:
        """Continuous aging, youngest to oldest: yields, per frame, one [256, 256, 3] uint8 tile per face.

        Decoding runs in chunks (``--batch``), so memory does not depend on the number of frames.
        """
        streams = []
        for face in photo.faces:
            model = self.choose_model(photo, face)
            engine = self.engine(model)
            with self.timed("encode"):
                feats = engine.encode(to_tensor(face.network_input))[0]
            lat = engine.traversal(self.anchors(model), steps)
            streams.append(_tiles(engine.decode_stream(feats, lat), self))
        yield from zip(*streams)


def _tiles(chunks, pipeline: Pipeline) -> Iterator[np.ndarray]:
    while True:
        with pipeline.timed("decode"):
            chunk = next(chunks, None)
        if chunk is None:
            return
        yield from to_uint8(chunk)


#: decoder activations alive at once per frame, in 64-channel maps of the output size (measured peak
#: of the batched schedule at the upsampling blocks, with margin)
FRAME_MAPS = 5
#: per-sample modulated weights of one frame on the CPU (float32, all twelve convs)
CPU_FRAME_WEIGHTS = 24 * 2**20


def default_chunk(device, dtype=None, size: int = GEN_SIZE) -> int:
    """Frames decoded at once, from the frame size, the dtype and the memory available.

    GPUs decode a chunk as one batch: up to half the free memory, at most 128 frames. CPUs run the
    frames of a chunk one by one (the chunk only bounds buffered outputs), so a few suffice; an
    eighth of the available memory bounds it on small machines.
    """
    import torch

    itemsize = torch.empty((), dtype=dtype or torch.float32).element_size()
    per_frame = FRAME_MAPS * 64 * (size + 2) ** 2 * itemsize
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(max(1, min(128, free // 2 // per_frame)))
    per_frame += CPU_FRAME_WEIGHTS + 3 * size * size * 4
    cap = 16 if kind == "mps" else 8
    return int(max(1, min(cap, available_memory() // 8 // per_frame)))


def available_memory() -> int:
    """Bytes of RAM available to new allocations (MemAvailable on Linux; 4 GiB where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 4 * 2**30


def class_labels() -> list[str]:
    return ["input", *AGE_CLASSES]
