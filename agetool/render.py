"""The render core: from prepared faces and a request to aged tiles, pasted photos and the ``AgingResult``.

Every medium renders through one ``Renderer``: photos (``AgingPipeline.age``), aging videos
(``agetool.morph``), clips (``agetool.clip.runner``) and the web app (``agetool.serve.studio``). It owns

- each face's estimate (age and gender) and the generator that renders it (``estimate``, ``decide``);
- the generator's identity features of each face (``encode``, in batches);
- the latents of each face at the requested ages (``latents``: seeded class codes, ages in years
  blended between the class anchors, relative ages from the face's estimate);
- decoding (``decode``): (face, latents) jobs of every face decoded together, one frame per worker
  thread on CPUs and batches across faces on GPUs, with a ``check()`` between two frames (a web
  request's budget and cancellation);
- upscaling, and paste-back with one blend rule per face (``blend``: the parsed face, computed once
  and held on the face; a clip eases it from frame to frame);
- ``result``: the ``AgingResult`` of a photo.

A ``Renderer`` serves one request at a time: its ``lock`` is held by each medium over a whole call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import numpy as np

from agetool.ages import (DEFAULT_ANCHORS, AgeTarget, blend, old_age_warning, target_latents, year_weights,
                          years_text)
from agetool.errors import EstimateError, UsageError, arg
from agetool.models import Models
from agetool.results import AgeEstimate, AgingResult, EncodedPhoto, Face

#: side of the generator's tiles (and of the held blend weights)
TILE = 256
Check = Callable[[], None]


class Renderer:
    """Renders faces with ``models``; ``model`` is ``"auto"`` (each face's estimated gender),
    ``"male"``, ``"female"`` or the name of a generator file in ``models`` (``Models.add_generator``)."""

    def __init__(self, models: Models, model: str = "auto", anchor_ages: Sequence[float] | None = None):
        self.models = models
        self.model = model
        self.anchor_ages = tuple(DEFAULT_ANCHORS.values()) if anchor_ages is None else tuple(anchor_ages)
        self.lock = threading.RLock()
        self._warned: set = set()

    # ---------------------------------------------------------------- notices
    def report(self, message: str) -> None:
        self.models.loading.say(message)

    def warn_once(self, message: str) -> None:
        """``message`` reported the first time only (per renderer)."""
        if message not in self._warned:
            self._warned.add(message)
            self.models.loading.say(message)

    def warn_old(self, targets: Sequence[AgeTarget]) -> None:
        """Once: ages past the oldest class render that class."""
        warning = old_age_warning(targets)
        if warning:
            self.warn_once(f"warning: {warning}")

    def progress(self, description: str, total: int | None) -> Callable[[int], None]:
        """``advance(n)`` of the models' progress callback (nothing without one)."""
        return self.models.loading.advance(description, total)

    # ---------------------------------------------------------------- estimate and model
    def classifier(self, estimate: bool | str = "auto"):
        """The age and gender classifier, or None: ``estimate`` False skips it, ``"auto"`` takes it
        where it is at hand without a download, True requires it; ``model="auto"`` always does."""
        if estimate is False:
            return None
        if self.model == "auto":
            return self.models.classifier  # ModelChoiceError says how to choose by hand
        classifier = self.models.classifier_if_available()
        if classifier is None and estimate is True:
            raise _no_estimate()
        return classifier

    def look(self, image: np.ndarray, face: Face, classifier) -> tuple[str, float, float]:
        """One look of the classifier at ``face`` of ``image``: (gender, probability, age in years)."""
        with self.models.timer("classify"):
            return classifier.estimate(image, face)

    def estimate(self, image: np.ndarray, face: Face, estimate: bool | str = "auto") -> AgeEstimate | None:
        """``face``'s estimated age and gender (one look), or None (see ``classifier``)."""
        classifier = self.classifier(estimate)
        return None if classifier is None else combine([self.look(image, face, classifier)])

    def decide(self, who: str, estimate: AgeEstimate | None, *, relative: bool = False) -> str:
        """The generator that renders a face with this estimate (reported as ``who``: ~age, gender,
        and the model chosen for it); ``relative``: the ages need the estimate."""
        if estimate is None and relative:
            raise _no_estimate()
        if self.model == "auto":
            if estimate is None:
                raise EstimateError(f"{who}: no age and gender estimate to choose its model")
            self.report(f"{who}: ~{years_text(estimate.age)}, {estimate.gender} "
                        f"(p = {estimate.gender_probability:.2f}): {estimate.gender} model")
            return estimate.gender
        if estimate is not None:
            self.report(f"{who}: ~{years_text(estimate.age)}, {estimate.gender} (p = {estimate.gender_probability:.2f})")
        return self.model

    @staticmethod
    def combine(looks: Sequence[tuple[str, float, float]]) -> AgeEstimate | None:
        """One estimate from several looks at a face (``combine``)."""
        return combine(looks)

    # ---------------------------------------------------------------- features
    def encode(self, faces: Sequence[Face], batch: int = 1, fast: bool = False) -> list[Face]:
        """``faces``, each with the generator's identity features (filled in where missing, ``batch``
        crops of one model encoded at once). ``fast`` (clips): in the engine's dtype on CPUs too,
        where photos are encoded in float32 (``AgingEngine.encode``)."""
        from agetool.images import to_tensor

        out = list(faces)
        todo: dict[str, list[int]] = {}
        for i, face in enumerate(out):
            if face.features is None:
                todo.setdefault(face.model, []).append(i)
        with self.lock:
            for model, indices in todo.items():
                engine = self.models.engine(model)
                with self.models.timer("encode"):
                    for start in range(0, len(indices), batch):
                        part = indices[start:start + batch]
                        feats = engine.encode(to_tensor(np.stack([out[i].network_input for i in part])), fast)
                        for i, x in zip(part, feats):
                            out[i].features = x
        return out

    # ---------------------------------------------------------------- latents
    def anchors(self, face: Face, noise: float, seed: int):
        """The six class latents [6, 256] of ``face``'s model for this seed and noise."""
        return self.models.anchors(face.model, noise, seed)

    def latents(self, face: Face, targets: Sequence[AgeTarget], noise: float, seed: int):
        """w [N, 256] of ``face`` at ``targets`` (relative ages from its estimate)."""
        return target_latents(self.anchors(face, noise, seed), list(targets), self.anchor_ages, _age(face))

    def year_latents(self, face: Face, years: Sequence[float], noise: float, seed: int):
        """w [N, 256] of ``face`` at ages in years: each a blend of the two class anchors around it."""
        lower, alpha = year_weights(years, self.anchor_ages)
        return blend(self.anchors(face, noise, seed), lower, alpha)

    def years(self, face: Face, targets: Sequence[AgeTarget]) -> list[float]:
        """Each target's age in years for ``face``."""
        return [t.years(self.anchor_ages, _age(face)) for t in targets]

    # ---------------------------------------------------------------- decode
    def stream(self, face: Face, w, check: Check | None = None) -> Iterator[np.ndarray]:
        """``face`` decoded at each latent of ``w`` [N, 256], one uint8 tile [256, 256, 3] at a time
        (memory does not grow with N)."""
        from agetool.images import to_uint8

        frames = self.models.engine(face.model).decode_pairs([(face.features, w)])
        while True:
            if check is not None:
                check()
            with self.models.timer("decode"):
                frame = next(frames, None)
            if frame is None:
                return
            yield to_uint8(frame[None])[0]

    def decode(self, jobs: Sequence[tuple[Face, object]], check: Check | None = None) -> list[np.ndarray]:
        """Tiles [n, 256, 256, 3] uint8 of each (face, w [n, 256]) job, in order: the jobs of one
        model decoded together; ``check()`` runs before each frame (it may raise to stop)."""
        from agetool.images import to_uint8

        out: list = [None] * len(jobs)
        by_model: dict[str, list[int]] = {}
        for i, (face, _) in enumerate(jobs):
            by_model.setdefault(face.model, []).append(i)
        with self.lock:
            for model, indices in by_model.items():
                frames = self.models.engine(model).decode_pairs([(jobs[i][0].features, jobs[i][1]) for i in indices])
                for i in indices:
                    tiles = []
                    for _ in range(len(jobs[i][1])):
                        if check is not None:
                            check()
                        with self.models.timer("decode"):
                            tiles.append(to_uint8(next(frames)[None])[0])
                    out[i] = np.stack(tiles) if tiles else np.zeros((0, TILE, TILE, 3), np.uint8)
        return out

    def upscale(self, tiles: np.ndarray, factor: int) -> np.ndarray:
        """Tiles ([S, S, 3] or [N, S, S, 3] uint8) at ``factor`` (1, 2 or 4) x their size."""
        if factor == 1:
            return tiles
        with self.lock:
            upscaler = self.models.upscaler
            with self.models.timer("upscale"):
                return upscaler.upscale(np.asarray(tiles), factor)

    # ---------------------------------------------------------------- paste-back
    @staticmethod
    def blend(face: Face) -> np.ndarray:
        """The paste-back weights of ``face`` [256, 256] float32: its parsed face, hair, ears and neck
        (a soft ellipse without parsing), computed once and held on the face."""
        if face.blend is None:
            from agetool.face.paste import paste_mask

            face.blend = paste_mask(face.parsing, TILE)
        return face.blend

    def paste(self, image: np.ndarray, faces: Sequence[Face], tiles: Sequence[np.ndarray | None]) -> np.ndarray:
        """``image`` with ``tiles[i]`` (256 px, or upscaled; None keeps the face) blended over face i
        with the face's held weights; an upscaled tile is shown at the face's own size in the photo."""
        from agetool.face.paste import paste_back
        from agetool.upscale import fit_paste

        if len(tiles) != len(faces):
            raise UsageError(f"{arg('tiles')}: expected one tile per face ({len(faces)}), got {len(tiles)}")
        canvas = image
        with self.models.timer("paste"):
            for face, tile in zip(faces, tiles):
                if tile is None:
                    continue
                if face.alignment is None:
                    raise UsageError(f"{arg('paste_back')} needs the original photo, not an aligned crop")
                tile, weights = fit_paste(tile, face.alignment, self.blend(face))
                canvas = paste_back(canvas, tile, face.alignment, mask=weights)
        return canvas

    # ---------------------------------------------------------------- draws
    def draws(self, faces: Sequence[Face], render, check: Check | None = None) -> list[tuple[np.ndarray, object]]:
        """(tiles [A, 256, 256, 3], ``agetool.faithful.Candidates`` or None) of each face at
        ``render``'s targets: the draw of the run's seed, or with ``candidates`` N the most faithful of
        N noise draws; every draw of every face decoded together."""
        import torch

        faces = self.encode(faces)
        seeds = render.seeds
        stacks = self.decode([(f, torch.cat([self.latents(f, render.targets, render.noise, s) for s in seeds]))
                              for f in faces], check)
        if len(seeds) == 1:
            return [(stack, None) for stack in stacks]
        from agetool.faithful import choose

        return [choose(self.models, face, stack.reshape(len(seeds), -1, *stack.shape[1:]), seeds,
                       keep=render.keep_candidates) for face, stack in zip(faces, stacks)]

    def draw_seed(self, who: str, faces: Sequence[Face], render, check: Check | None = None) -> int:
        """The noise seed one person keeps (a video's face, a clip's person): the run's seed, or with
        ``candidates`` N the most faithful of N draws at ``render``'s targets, scored on each of
        ``faces`` (crops of that person) and pooled; the choice is reported as ``who``."""
        if render.candidates == 1:
            return render.seed
        from agetool.faithful import describe_choice, pooled

        self.warn_old(render.targets)
        chosen = pooled([c for _, c in self.draws(faces, replace(render, keep_candidates=False), check)])
        self.report(describe_choice(who, chosen))
        return chosen.best.seed

    # ---------------------------------------------------------------- a photo
    def result(self, photo: EncodedPhoto, render, *, paste_back: bool = False,
               check: Check | None = None) -> AgingResult:
        """Every face of ``photo`` at ``render``'s targets (``agetool.options.RenderOptions``):
        upscaled when it asks, with paste-back the photo per column and per face."""
        from agetool.upscale import input_tile

        self.warn_old(render.targets)
        with self.lock:
            if render.relative and any(f.estimate is None for f in photo.faces):
                raise EstimateError(f"{arg('ages')}: relative ages need an age estimate of each face")
            faces = self.encode(photo.faces)
            if paste_back:
                for face in faces:
                    self.blend(face)  # held by the photo's faces and their results alike
            aged = []
            for face, (images, draws) in zip(faces, self.draws(faces, render, check)):
                if draws is not None:
                    from agetool.faithful import describe_choice

                    self.report(describe_choice(f"{photo.name} face {face.index}", draws))
                shown = None
                if render.upscale > 1:
                    images = self.upscale(images, render.upscale)
                    shown = input_tile(photo.image, face, images.shape[1])
                aged.append(replace(face, features=None, images=images, labels=render.labels,
                                    ages=self.years(face, render.targets), input_tile=shown, candidates=draws))
            pasted = None
            if paste_back:
                for face in aged:
                    face.pasted = [self.paste(photo.image, [face], [t]) for t in face.images]
                pasted = [self.paste(photo.image, aged, [a.images[k] for a in aged]) for k in range(len(render.targets))]
            return AgingResult(photo.image, photo.name, aged, render.labels, pasted,
                               record=self.record(photo, render, aged))

    def record(self, photo: EncodedPhoto, render, faces: Sequence[Face], *, medium: str = "photo",
               ages: Sequence[str] | None = None):
        """The ``agetool.provenance.Record`` of an output made from ``photo`` with ``render`` for
        ``faces``: the models that shaped them, seed, noise, the ages asked (``ages``: instead of
        ``render``'s) and what each became for each face, each face's estimated age, the photo's
        sha256. The same in every process that makes the same output (faces and generator may run
        apart, as on Ray)."""
        from agetool import __version__
        from agetool.provenance import FaceRecord, Record, source_sha256

        used = tuple(FaceRecord(None if f.estimate is None else round(float(f.estimate.age), 2),
                                tuple(round(float(y), 2) for y in f.ages),
                                None if getattr(f, "candidates", None) is None else int(f.candidates.best.seed))
                     for f in faces)
        models = self.models.used([f.model for f in faces if f.model],
                                  landmarks=any(f.detection is not None for f in faces),
                                  parser=any(f.parsing is not None for f in faces),
                                  classifier=any(f.estimate is not None for f in faces), upscaler=render.upscale > 1)
        return Record(__version__, models, render.seed, render.noise,
                      tuple(render.labels if ages is None else ages), used,
                      photo.source_sha256 or source_sha256(photo.image), medium)


def combine(looks: Sequence[tuple[str, float, float]]) -> AgeEstimate | None:
    """One estimate from the classifier's looks (gender, probability, age) at one face: the mean
    probability of each gender and the median age (a clip looks at a person over several frames)."""
    if not looks:
        return None
    if len(looks) == 1:
        gender, p, age = looks[0]
        return AgeEstimate(age, gender, p)
    male = sum(p if g == "male" else 1 - p for g, p, _ in looks) / len(looks)
    gender, p = ("male", male) if male >= 0.5 else ("female", 1 - male)
    return AgeEstimate(float(np.median([a for _, _, a in looks])), gender, p)


def _age(face: Face) -> float | None:
    return face.estimate.age if face.estimate is not None else None


def _no_estimate() -> EstimateError:
    return EstimateError(f"{arg('ages')}: a relative age needs each face's estimated age, and the age "
                         "classifier (genderage) is not at hand",
                         hint=f"give ages in years, pass {arg('classifier_weights', 'FILE')}, or run "
                              "`agetool weights download genderage`")
