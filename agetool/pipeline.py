"""``AgingPipeline``: photo -> faces -> aligned, masked crops -> generator -> ages, frames, video.

Example::

    import agetool

    pipe = agetool.AgingPipeline.from_pretrained(model="female")
    result = pipe("examples/astronaut.png", ages=[5, 20.5, "30-39"])
    result.grid().save("grid.png")
    for face in result.faces:
        print(face.index, face.model, face.labels, face.images.shape)   # [3, 256, 256, 3] uint8

Models load on first use and are reused by every later call. Calls from several threads are safe:
they take turns (one lock per pipeline), so one pipeline serves one request at a time.
"""

from __future__ import annotations

import os
from dataclasses import replace
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from agetool import validate
from agetool.ages import DEFAULT_ANCHORS, AgeTarget, check_anchors
from agetool.errors import EstimateError, arg
from agetool.faces import check_encoded, check_faces, prepare_faces
from agetool.images import DEFAULT_MAX_PIXELS, load_image
from agetool.loading import Loading
from agetool.models import LANDMARKS, Models, Timer, check_model, pretrained_model
from agetool.options import (DEFAULT_CRF, DEFAULT_FPS, DEFAULT_MAX_SIZE, DEFAULT_NOISE, DEFAULT_SEED, DEFAULT_STEPS,
                             AgeRequest, FaceOptions, RenderOptions, VideoOptions, request as build_request)
from agetool.render import Renderer
from agetool.results import AgingResult, EncodedPhoto, Face, FaceEstimate

Image = "str | os.PathLike | np.ndarray | PIL.Image.Image"


class AgingPipeline:
    """Age progression for photos, from Python. Build one with ``from_pretrained``."""

    def __init__(self, models: Models, *, model: str | os.PathLike = "auto",
                 age_anchors: dict[str, float] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.models = models
        #: "auto", "male", "female", or the Path of the generator file
        self.model = check_model(model)
        self.age_anchors = dict(DEFAULT_ANCHORS if age_anchors is None else age_anchors)
        self.anchor_ages = check_anchors(self.age_anchors)
        self.max_pixels = validate.integer("max_pixels", max_pixels, low=64)
        name = models.add_generator(self.model) if isinstance(self.model, Path) else self.model
        self.core = Renderer(models, name, self.anchor_ages)  # every medium renders through it
        self._references: dict[str, object] = {}  # "ref:PHOTO" -> its FaceReference, embedded once

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = "auto", weights: str | os.PathLike | None = None,
                        parser_weights: str | os.PathLike | None = None, landmarks: str = "auto",
                        device: str = "auto", dtype: str = "float32", offline: bool = False, *,
                        classifier_weights: str | os.PathLike | None = None,
                        age_anchors: dict[str, float] | str | os.PathLike | None = None,
                        batch: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                        upscale_weights: str | os.PathLike | None = None,
                        report: Callable[[str], None] | None = None, progress=None) -> "AgingPipeline":
        """A pipeline with the released models (downloaded once, verified, cached) or your files.

        Args:
            model: ``"auto"`` (the male or female generator, chosen per face by a gender classifier),
                ``"male"``, ``"female"``, or the path of a generator file (the released
                ``latest_net_g_running.pth``, the released zip, or an agetool ``.safetensors``).
            weights: deprecated: a generator file, as ``model=PATH`` (it warns ``DeprecationWarning``).
            parser_weights: a face-parser checkpoint (default: the registry's ``deeplab-parser``).
            landmarks: ``"auto"``, ``"fan"`` or ``"dlib"``.
            device: ``"auto"`` (CUDA, then Metal, then the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.
            dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` (GPU) or ``"auto"``.
            offline: never use the network; fail if a model is not cached.
            classifier_weights: the gender / age classifier (``genderage.onnx``; default: the registry's).
            age_anchors: the age in years of each class (a mapping or a JSON file) for ages in years.
            batch: frames decoded at once (default: chosen from the device's memory).
            upscale_weights: the super-resolution model for ``upscale=2|4``: a registered name
                (default ``realesr-general-x4v3``; ``realesrgan-x4plus``, ``realesrgan-x2plus``) or a
                file (Real-ESRGAN, or any model spandrel loads with the ``agetool[upscale]`` extra).
            report: receives one-line notices (model choices, licenses, warnings prefixed ``warning: ``).
            progress: ``progress(description, total) -> advance(n)`` for downloads and long work.
        """
        from agetool.device import check_names, env_dist, pick_device, pick_dtype

        model = pretrained_model(model, weights)
        validate.choice("landmarks", landmarks, LANDMARKS)
        loading = Loading.of(offline, progress, report)  # every model file is had through it
        if batch is not None:
            validate.integer("batch", batch, low=1, high=4096)
        validate.integer("max_pixels", max_pixels, low=64)
        check_names(device, dtype)  # every usage error before torch loads
        dev = pick_device(device, dist=env_dist())  # under torchrun: this rank's GPU
        dt = pick_dtype(dtype, dev)
        if isinstance(age_anchors, (str, os.PathLike)):
            from agetool.ages import load_anchors

            age_anchors = load_anchors(age_anchors)
        for name, path in (("parser_weights", parser_weights), ("classifier_weights", classifier_weights)):
            if path is not None and not Path(path).is_file():
                from agetool.errors import CheckpointError

                raise CheckpointError(f"{arg(name, str(path))}: no such file", hint="check the path")
        if upscale_weights is not None:
            from agetool.upscale import resolve

            resolve(upscale_weights)  # a missing file fails here, before any work
        models = Models(parser_weights=None if parser_weights is None else Path(parser_weights),
                        classifier_weights=None if classifier_weights is None else Path(classifier_weights),
                        landmarks=landmarks, loading=loading, device=dev, dtype=dt, batch=batch, timer=Timer(dev),
                        upscale_weights=upscale_weights)
        return cls(models, model=model, age_anchors=age_anchors,
                   max_pixels=max_pixels)

    @classmethod
    def from_pipe(cls, pipe: "AgingPipeline", *, model: str | None = None) -> "AgingPipeline":
        """A sibling of ``pipe`` that shares its loaded models (nothing is loaded twice) and settings,
        with another generator choice (``"auto"``, ``"male"``, ``"female"`` or a generator file; None
        keeps ``pipe``'s)."""
        return cls(pipe.models, model=pipe.model if model is None else model, age_anchors=pipe.age_anchors,
                   max_pixels=pipe.max_pixels)

    # ------------------------------------------------------------------ properties
    @property
    def device(self):
        return self.models.device

    @property
    def dtype(self):
        return self.models.dtype

    @property
    def timings(self) -> dict[str, float]:
        """Seconds spent per stage so far (each stage counted once)."""
        return dict(self.models.timer.seconds)

    def close(self, timeout: float | None = None) -> bool:
        """Start no more background model loads and wait up to ``timeout`` seconds for running ones;
        True when none is left running. ``with AgingPipeline.from_pretrained(...) as pipe:`` closes on exit."""
        return self.models.close(timeout)

    def __enter__(self) -> "AgingPipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_models(self, *, aligned: bool = False, mask: bool = True, paste_back: bool = False,
                     estimate: bool = False, generate: bool = True, upscale: bool = False) -> None:
        """Before anything loads: with network access off, one ``MissingModelsError`` naming every
        model file a call with these options needs and does not have (``estimate``: each face's
        estimated age is required; ``generate=False``: no generator, as ``estimate()``; ``upscale``:
        the super-resolution model of ``upscale=2|4``, which is then loaded: a file it can't use fails here)."""
        from agetool.needs import pipeline_files, require

        require(pipeline_files(self.models, self.model, generate=generate, landmarks=not aligned,
                               parser=mask or paste_back, classifier=estimate, upscale=upscale),
                self.models.loading)
        if upscale:  # loaded and checked now (its limits, its scale): a bad file fails before any work
            self.models.upscaler

    # ------------------------------------------------------------------ encode
    def encode(self, image: Image | EncodedPhoto, *, aligned: bool = False, mask: bool = True,
               faces: str = "all", min_face: int = 0, estimate: bool | str = "auto",
               paste_back: bool = False) -> EncodedPhoto:
        """Find, align, mask and encode every face of ``image`` once; ``render`` then costs one decode per age.

        ``estimate``: ``"auto"`` estimates each face's age and gender where the classifier is at
        hand without a download (always with ``model="auto"``), ``True`` requires it, ``False`` skips it.
        """
        options = FaceOptions.of(aligned=aligned, mask=mask, faces=faces, min_face=min_face, paste_back=paste_back)
        return self._encode(image, options, estimate, generate=True)

    def prepare(self, image: Image, *, aligned: bool = False, mask: bool = True, faces: str = "all",
                min_face: int = 0, estimate: bool | str = "auto", paste_back: bool = False) -> EncodedPhoto:
        """``encode`` up to the generator: every face found, aligned, masked, estimated and given its
        model, with ``features`` left None. ``encode``, ``render`` and ``__call__`` take the result and
        run the generator; a pipeline that never runs the generator never loads one, so the face
        stages and the generator can run in different processes (``agetool.ray``)."""
        options = FaceOptions.of(aligned=aligned, mask=mask, faces=faces, min_face=min_face, paste_back=paste_back)
        return self._encode(image, options, estimate, generate=False)

    def _encode(self, image, options: FaceOptions, estimate, *, generate: bool) -> EncodedPhoto:
        if isinstance(image, EncodedPhoto):
            check_encoded(image, options)
            return replace(image, faces=self.core.encode(image.faces)) if generate else image
        with self.core.lock:
            with self.models.timer("read"):
                array, name = load_image(image, self.max_pixels)
            # a readable photo: every missing model in one error, before any loads
            self.check_models(aligned=options.aligned, mask=options.mask, paste_back=options.paste_back,
                              estimate=estimate is True, generate=generate)
            # the parser and a known generator load while the faces are found
            self.models.preload(parser=options.parse,
                                model=None if self.model == "auto" or not generate else self.core.model)
            faces = prepare_faces(self.models, array, aligned=options.aligned, mask=options.mask, parse=options.parse,
                                  faces=self._reference(options.faces), min_face=options.min_face, name=name)
            for face in faces:
                face.estimate = self.core.estimate(array, face, estimate)
                face.model = self.core.decide(f"{name} face {face.index}", face.estimate)
            from agetool.provenance import source_sha256

            # the photo named by its content in the outputs' records (the file's bytes; an array's pixels)
            digest = source_sha256(image if isinstance(image, (str, os.PathLike)) else array)
            return EncodedPhoto(array, name, self.core.encode(faces) if generate else faces, digest)

    # ------------------------------------------------------------------ render
    def targets(self, ages) -> list[AgeTarget]:
        """``ages`` as targets (``None`` -> the six classes); warns once for ages over 69."""
        render = RenderOptions.of(ages)
        self.core.warn_old(render.targets)
        return list(render.targets)

    def request(self, ages=None, *, aligned: bool = False, mask: bool = True, faces="all", min_face: int = 0,
                paste_back: bool = False, seed: int = DEFAULT_SEED, noise: float = DEFAULT_NOISE,
                upscale: int | None = None, candidates: int = 1, keep_candidates: bool = False) -> AgeRequest:
        """The options of a call (see ``__call__``) as one value, validated once: build it once and
        pass it to ``age`` for any number of photos (the command line does, for a folder)."""
        return build_request(ages, aligned=aligned, mask=mask, faces=faces, min_face=min_face,
                             paste_back=paste_back, seed=seed, noise=noise, upscale=upscale, candidates=candidates,
                             keep_candidates=keep_candidates)

    def render(self, face: Face, ages=None, *, seed: int = DEFAULT_SEED, noise: float = DEFAULT_NOISE,
               targets: list[AgeTarget] | None = None) -> np.ndarray:
        """One encoded face at ``ages`` (or ``targets``, from ``targets()``) -> [N, 256, 256, 3] uint8
        (default: the six classes)."""
        render = RenderOptions.of(targets if targets is not None else ages, seed=seed, noise=noise)
        self.core.warn_old(render.targets)
        face = self.core.encode([face])[0]
        return self.core.decode([(face, self.core.latents(face, render.targets, noise=render.noise,
                                                          seed=render.seed))])[0]

    def target_years(self, targets: Sequence[AgeTarget], face: Face) -> list[float]:
        return self.core.years(face, targets)

    def paste_back(self, encoded: EncodedPhoto, tiles: Sequence[np.ndarray | None]) -> np.ndarray:
        """The photo with ``tiles[i]`` ([S, S, 3]: 256 px, or upscaled; None to keep it) blended over
        face i; an upscaled tile is shown at the face's own size in the photo."""
        return self.core.paste(encoded.image, encoded.faces, tiles)

    def __call__(self, image: Image, ages=None, aligned: bool = False, mask: bool = True, seed: int = DEFAULT_SEED,
                 noise: float = DEFAULT_NOISE, paste_back: bool = False, faces: str = "all",
                 min_face: int = 0, upscale: int | None = None, candidates: int = 1,
                 keep_candidates: bool = False) -> AgingResult:
        """Render every face of ``image`` at ``ages`` (default: the six classes, youngest first).

        ``image``: a path, an RGB uint8 array [H, W, 3] or a PIL image. ``ages``: years (``20.5``),
        class labels (``"30-39"``) and relative ages (``"+20"``, from the face's estimated age), as
        a list or a comma-separated string. ``upscale`` 2 or 4: the aged faces (and the input
        column, re-aligned from the photo) come out at 512 / 1024 px, and paste-back shows them at
        the face's own size in the photo. ``faces``: ``"all"``, ``"largest"``, or only the faces of one
        person: ``"ref:PHOTO"``, a photo, an ``agetool.identity.Embedding`` or a ``FaceReference``.
        ``candidates`` N (1 to 16): N noise draws of each face (seeds ``seed`` ... ``seed + N - 1``),
        each scored against the input (``agetool.faithful``: identity, skin tone, gender), the most
        faithful kept; ``face.candidates`` holds every draw's scores (and with ``keep_candidates``
        their images). Returns an ``AgingResult`` (``result.grid()`` is the image ``agetool age`` writes).
        """
        return self.age(image, self.request(ages, aligned=aligned, mask=mask, faces=faces, min_face=min_face,
                                            paste_back=paste_back, seed=seed, noise=noise, upscale=upscale,
                                            candidates=candidates, keep_candidates=keep_candidates))

    def age(self, image: Image | EncodedPhoto, request: AgeRequest, *, check=None) -> AgingResult:
        """``__call__`` with its options as one validated value (``request()``); ``check()`` runs
        between two decodes (it may raise to stop the call)."""
        options, render = request.face, request.render
        self.core.warn_old(render.targets)
        self._check_upscale(request)
        with self.core.lock:
            enc = self._encode(image, options, True if render.relative else "auto", generate=True)
            result = self.core.result(enc, render, paste_back=options.paste_back, check=check)
            result.source = str(image) if isinstance(image, (str, os.PathLike)) else None  # signed outputs' parent
            return result

    def upscale(self, tiles: np.ndarray, factor: int = 4) -> np.ndarray:
        """Aged face tiles ([256, 256, 3] or [N, 256, 256, 3] uint8) at ``factor`` x their size with
        the pipeline's super-resolution model (loaded on first use); ``paste_back`` takes the result."""
        from agetool.options import check_factor

        return self.core.upscale(tiles, check_factor(factor))

    # ------------------------------------------------------------------ video
    def frame_ages(self, steps: int = DEFAULT_STEPS, *, from_age: float | None = None,
                   to_age: float | None = None, frames: int | None = None) -> list[float]:
        """The age in years of each video frame: the class traversal (``steps`` frames per class
        transition, 5 x steps + 1 frames) or, with ``from_age`` / ``to_age``, ages uniformly
        spaced in years (``frames`` of them, default at the traversal's density)."""
        from agetool import morph

        return morph.frame_ages(self.core, VideoOptions.of(steps=steps, from_age=from_age, to_age=to_age, frames=frames))

    def frames(self, image: Image | EncodedPhoto, steps: int = DEFAULT_STEPS, *, from_age: float | None = None,
               to_age: float | None = None, frames: int | None = None, aligned: bool = False, mask: bool = True,
               seed: int = DEFAULT_SEED, noise: float = DEFAULT_NOISE, paste_back: bool = False, faces: str = "all",
               min_face: int = 0, max_size: int | None = DEFAULT_MAX_SIZE,
               upscale: int | None = None, candidates: int = 1) -> Iterator[np.ndarray]:
        """Continuous aging, youngest to oldest, one RGB uint8 frame at a time (never all in memory).

        A frame is the faces side by side ([256, 256 x faces, 3]) or, with ``paste_back``, the whole
        photo with every face aged, its long side capped at ``max_size`` (None: no cap) and both
        sides even. Without ``from_age`` / ``to_age`` the frames follow the class traversal exactly
        (frame j of transition i blends w_i and w_(i+1) with weight 1 - j / steps). ``upscale`` 2
        or 4 upscales every face of every frame (tiles of 512 / 1024 px) before it is shown.
        ``candidates`` N: each face's most faithful of N noise draws (see ``__call__``), scored at the
        first and last age and the class anchors between, held for every frame.
        """
        from agetool import morph

        request = self.request(None, aligned=aligned, mask=mask, faces=faces, min_face=min_face,
                               paste_back=paste_back, seed=seed, noise=noise, upscale=upscale, candidates=candidates)
        video = VideoOptions.of(steps=steps, from_age=from_age, to_age=to_age, frames=frames, max_size=max_size)
        self._check_upscale(request)
        return morph.frames(self.core, self._encoder(image, request), request, video)

    def video(self, image: Image | EncodedPhoto, out: str | os.PathLike, fps: float = DEFAULT_FPS,
              steps: int = DEFAULT_STEPS, *, from_age: float | None = None, to_age: float | None = None,
              seconds: float | None = None, hold: float = 0.0, crf: int = DEFAULT_CRF, caption: bool = False,
              frames_dir: str | os.PathLike | None = None, max_size: int | None = DEFAULT_MAX_SIZE,
              **frame_options) -> Path:
        """Write the aging video to ``out`` (H.264 yuv420p MP4; temporary name, then rename).

        ``seconds`` sets the length (frames = seconds x fps, ages spaced in years); ``hold`` pauses
        on the first and last frame; ``caption`` writes the age in years on each frame;
        ``frames_dir`` also writes every frame as ``frame_00000.png`` ... Other keyword arguments
        are those of ``frames``. Returns the path written.
        """
        video = VideoOptions.of(fps=fps, steps=steps, from_age=from_age, to_age=to_age, seconds=seconds, hold=hold,
                                crf=crf, caption=caption, max_size=max_size)
        return self.write_video(image, out, self.request(None, **frame_options), video, frames_dir=frames_dir)

    def write_video(self, image: Image | EncodedPhoto, out: str | os.PathLike, request: AgeRequest,
                    video: VideoOptions, *, frames_dir: str | os.PathLike | None = None, label: bool = False,
                    signing=None) -> Path:
        """``video`` with its options as validated values (``request()``, ``VideoOptions.of``);
        ``label`` and ``signing`` as ``agetool.morph.write_video`` takes them."""
        from agetool import morph

        self._check_upscale(request)
        source = str(image) if isinstance(image, (str, os.PathLike)) else None
        return morph.write_video(self.core, self._encoder(image, request), out, request, video, frames_dir=frames_dir,
                                 label=label, signing=signing, source=source)

    def _reference(self, faces):
        """``faces`` for the face stages: a ``"ref:PHOTO"`` made into its reference once per pipeline."""
        if not isinstance(faces, str):
            return check_faces(faces)
        if faces not in self._references:
            self._references[faces] = check_faces(faces)
        return self._references[faces]

    def _encoder(self, image: Image | EncodedPhoto, request: AgeRequest) -> Callable[[], EncodedPhoto]:
        return lambda: self._encode(image, request.face, "auto", generate=True)

    def _check_upscale(self, request: AgeRequest) -> None:
        """With upscaling or scored draws, every missing model file in one error, before any work."""
        options, render = request.face, request.render
        scored = render.candidates > 1  # draws are scored over the face's skin: the parser is needed
        if render.upscale > 1 or (scored and not options.parse):
            self.check_models(aligned=options.aligned, mask=options.mask or scored, paste_back=options.paste_back,
                              upscale=render.upscale > 1)

    # ------------------------------------------------------------------ clips
    def age_clip(self, src: str | os.PathLike, out=None, ages=60, **options) -> list[Path]:
        """Age the people of a video clip: one clip per age (``out``: a file for one age, else a folder
        for ``<stem>_age<entry>.mp4``), with the source's size, frame count, timing, rotation and
        audio; ``from_age`` / ``to_age`` instead age them progressively over the clip. Returns the
        paths written. See ``agetool.clip.age_clip`` for the options."""
        from agetool.clip import age_clip

        with self.core.lock:
            return age_clip(self, src, out, ages, **options)

    def clip_frames(self, src: str | os.PathLike, ages=None, **options):
        """The aged frames of a clip, lazily: ``agetool.clip.ClipFrame``s (``.image``, ``.pts``, ``.time``)."""
        from agetool.clip import clip_frames

        return clip_frames(self, src, ages, **options)

    # ------------------------------------------------------------------ face stages on their own
    def faces(self, image: Image, *, aligned: bool = False, mask: bool = True, parse: bool | None = None,
              faces: str = "all", min_face: int = 0) -> list:
        """The faces of ``image`` as the generator would see them (``agetool.results.Face``:
        aligned 256 px crop, masked input, parsing labels, detection and alignment), left to right."""
        faces = check_faces(faces)
        validate.integer("min_face", min_face, low=0)
        with self.core.lock:
            with self.models.timer("read"):
                array, name = load_image(image, self.max_pixels)
            return prepare_faces(self.models, array, aligned=aligned, mask=mask, parse=parse, faces=faces,
                                 min_face=min_face, name=name)

    def align(self, image: Image, *, size: int = 256, landmarks=None, faces: str = "all",
              min_face: int = 0) -> list:
        """Aligned crops (``agetool.face.align.AlignedFace``, ``size`` px) of each face, left to right;
        ``landmarks`` ([68, 2] photo pixels, one face) skips detection."""
        from agetool.face.align import align_face
        from agetool.faces import find_faces

        faces = check_faces(faces)
        size = validate.integer("size", size, low=16, high=4096)
        with self.core.lock:
            array, name = load_image(image, self.max_pixels)
            if landmarks is not None:
                points = [np.asarray(landmarks, dtype=np.float64)]
            else:
                points = [f.landmarks for f in find_faces(self.models, array, faces=faces, min_face=min_face,
                                                          name=name)]
            with self.models.timer("align"):
                return [align_face(array, lm, size=size) for lm in points]

    def parse(self, crop: np.ndarray) -> np.ndarray:
        """Face-parsing labels [S, S] uint8 (19 CelebAMask-HQ classes) of an aligned crop [S, S, 3]."""
        with self.core.lock:
            parser = self.models.parser
            with self.models.timer("parse"):
                return parser.parse(crop)

    # ------------------------------------------------------------------ estimate
    def _estimator(self):
        """The age and gender classifier, with an error about estimates (not the model choice)."""
        from agetool.errors import ModelChoiceError

        try:
            return self.models.classifier
        except ModelChoiceError as e:
            raise EstimateError(f"age estimates need the age and gender classifier (genderage): "
                                f"{getattr(e, 'reason', e.message)}",
                                hint=f"pass {arg('classifier_weights', 'FILE')}, place a copy with `agetool weights "
                                     "import FILE --as genderage`, or run `agetool weights download genderage`") from None

    def estimate(self, image: Image, *, aligned: bool = False, faces: str = "all",
                 min_face: int = 0) -> list[FaceEstimate]:
        """Each face's estimated age (years) and gender, with the probability of that gender."""
        faces = check_faces(faces)
        with self.core.lock:
            with self.models.timer("read"):
                array, name = load_image(image, self.max_pixels)
            self.check_models(aligned=aligned, mask=False, estimate=True, generate=False)
            crops = prepare_faces(self.models, array, aligned=aligned, mask=False, faces=faces,
                                  min_face=min_face, name=name)
            classifier = self._estimator()
            out = []
            for crop in crops:
                with self.models.timer("classify"):
                    gender, p, age = classifier.estimate(array, crop)
                out.append(FaceEstimate(crop.index, crop.box, age, gender, p))
            return out
