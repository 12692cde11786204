"""Training data in the reference layout: ``DIR/train<class>/*.png`` with ``DIR/train<class>/parsings/*.png``.

Every item is a pair of images of two different age classes (A and B), as in the reference: the
classes and the images are drawn at random, and one epoch has half as many pairs as there are
images. The draws of item ``i`` in epoch ``e`` depend only on (seed, e, i), so any sampler, worker
count or resume point sees the same pairs. Inputs are masked with the face-parsing labels
(background, hat, earrings, necklace, clothes painted gray), resized to the training size and
flipped left-right at random; tensors are float32 [3, S, S] in [-1, 1].
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agetool.ages import AGE_CLASSES
from agetool.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PARSINGS = "parsings"


@dataclass(frozen=True)
class ClassFolder:
    index: int          # position in AGE_CLASSES
    name: str           # "0-2", ...
    images: tuple[Path, ...]
    parsings: tuple[Path | None, ...]


def ignored_folders(root: str | os.PathLike, phase: str = "train",
                    classes: Sequence[str] = AGE_CLASSES) -> dict[str, int]:
    """``<phase>*`` folders under ``root`` that training does not read (age groups outside the six
    classes, such as ``train40-49``), with the images in each."""
    root = Path(root)
    wanted = {f"{phase}{name}" for name in classes}
    out = {}
    for folder in sorted(root.glob(f"{phase}*")) if root.is_dir() else []:
        if folder.name in wanted or not folder.is_dir():
            continue
        n = sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if n:
            out[folder.name] = n
    return out


def scan(root: str | os.PathLike, phase: str = "train", classes: Sequence[str] = AGE_CLASSES,
         need_parsings: bool = True) -> list[ClassFolder]:
    """Find ``root/<phase><class>`` folders of the given classes with their images and parsings."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such data folder",
                           hint="pass one gender's folder, e.g. ffhq-aging/males (see `agetool dataset prepare`)")
    from agetool.train.curation import taken_down_near

    gone = taken_down_near(root)  # images removed on request (TAKEDOWN.txt) are never trained on
    found: list[ClassFolder] = []
    missing_parsings: list[Path] = []
    for index, name in enumerate(classes):
        folder = root / f"{phase}{name}"
        if not folder.is_dir():
            continue
        images = sorted(p for p in folder.iterdir()
                        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith("."))
        images = [p for p in images if not (p.stem.isdigit() and int(p.stem) in gone)]
        if not images:
            continue
        parsings: list[Path | None] = []
        for img in images:
            lab = folder / PARSINGS / f"{img.stem}.png"
            if lab.is_file():
                parsings.append(lab)
            else:
                parsings.append(None)
                missing_parsings.append(img)
        found.append(ClassFolder(index, name, tuple(images), tuple(parsings)))
    if len(found) < 2:
        have = ", ".join(f.name for f in found) or "none"
        raise DatasetError(f"{root}: training needs images of at least two age classes in "
                           f"{phase}<class>/ folders (found: {have})",
                           hint=f"expected folders {phase}0-2, {phase}3-6, ..., {phase}50-69 with *.png inside")
    if need_parsings and missing_parsings:
        raise DatasetError(f"{len(missing_parsings)} image(s) have no face-parsing labels, first: "
                           f"{missing_parsings[0]} (expected {missing_parsings[0].parent / PARSINGS / (missing_parsings[0].stem + '.png')})",
                           hint="add the parsings/ folders (agetool dataset prepare / from-photos) or train with --no-mask")
    return found


def load_training_image(image: Path, parsing: Path | None, size: int, mask: bool = True) -> np.ndarray:
    """Read, mask (when ``mask`` and labels exist) and resize to ``size``: uint8 [size, size, 3]."""
    from agetool.errors import InputError
    from agetool.face.mask import mask_background
    from agetool.images import read_image, read_label_map, resize

    try:
        rgb = read_image(image)
        if mask and parsing is not None:
            labels = read_label_map(parsing)
            if labels.shape != rgb.shape[:2]:
                labels = resize(labels, rgb.shape[1::-1], "nearest")
            rgb = mask_background(rgb, labels)
    except DatasetError:
        raise
    except InputError as e:
        raise DatasetError(e.message, hint="remove or replace the file in the training folder") from None
    return resize(rgb, size, "lanczos")


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index, 0x1A75]))


class PairDataset:
    """Map-style dataset of (A, B) pairs of different classes; see the module docstring.

    ``len`` is round(images / 2), at least ``min_len``. Call ``set_epoch`` before each epoch.
    """

    def __init__(self, root: str | os.PathLike, size: int, *, seed: int = 0, flip: bool = True,
                 mask: bool = True, phase: str = "train", min_len: int = 1):
        self.root = Path(root)
        self.size, self.seed, self.flip, self.mask = size, seed, flip, mask
        self.phase = phase
        self.classes = scan(self.root, phase, need_parsings=mask)
        self.n_images = sum(len(c.images) for c in self.classes)
        self.length = max(round(self.n_images / 2), min_len, 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _image(self, folder: ClassFolder, k: int, flip: bool):
        from agetool.images import to_tensor

        img = load_training_image(folder.images[k], folder.parsings[k], self.size, self.mask)
        return to_tensor(img[:, ::-1] if flip else img)[0]

    def __getitem__(self, index: int) -> dict:
        rng = item_rng(self.seed, self.epoch, int(index))
        n = len(self.classes)
        a = int(rng.integers(n))
        b = (a + 1 + int(rng.integers(n - 1))) % n  # uniform over the other classes
        ka = int(rng.integers(len(self.classes[a].images)))
        kb = int(rng.integers(len(self.classes[b].images)))
        flips = rng.random(2) < 0.5 if self.flip else (False, False)
        return {"A": self._image(self.classes[a], ka, bool(flips[0])),
                "B": self._image(self.classes[b], kb, bool(flips[1])),
                "A_class": self.classes[a].index, "B_class": self.classes[b].index}

    def samples(self) -> tuple[list, list[int]]:
        """The first image of each class, unflipped: the fixed inputs of the sample grids."""
        images = [self._image(c, 0, False) for c in self.classes]
        return images, [c.index for c in self.classes]

    def summary(self) -> dict[str, int]:
        return {c.name: len(c.images) for c in self.classes}

    def ignored(self) -> dict[str, int]:
        """Folders beside the class folders that training does not read, with their image counts."""
        return ignored_folders(self.root, self.phase)


class ResumableSampler:
    """Wraps a sampler (e.g. ``DistributedSampler``) and skips its first ``skip`` indices once.

    Used to continue an epoch in the middle after ``--resume``; ``set_epoch`` is passed through.
    """

    def __init__(self, sampler, skip: int = 0):
        self.sampler, self.skip = sampler, skip

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        for i, index in enumerate(self.sampler):
            if i >= skip:
                yield index

    def __len__(self) -> int:
        return len(self.sampler)
