"""Identity embeddings with an ArcFace-type ONNX model (AuraFace, insightface's recognition models).

Input preparation follows insightface: five points (eye centres, nose tip, mouth corners) are
mapped onto the ArcFace template of a 112 x 112 crop by a similarity transform (least squares,
Umeyama), the face is warped there bilinearly (black outside), RGB, ``(pixel - 127.5) / 127.5``
unless the graph normalizes by itself (its first nodes subtract and multiply). The output vector is
L2-normalized, so the identity similarity of two faces is the dot product of their embeddings.

The five points come from the 68 landmarks (iBUG order) of the face in the aligned crop; a crop
without landmarks uses where they lie in an FFHQ-aging crop of a frontal face.
"""

from __future__ import annotations

import os

import numpy as np

from agetool.loading import LOADING, Loading

#: the registry entry whose ``preprocess`` table holds the ArcFace template (``template``: left eye,
#: right eye, nose tip, left and right mouth corner in a crop of ``size`` pixels)
ENTRY = "arcface-w600k"
#: The five points in a 256 px FFHQ-aging crop of a frontal face (as the aligner places them).
ALIGNED_FIVE = np.array([[95.5, 121.8], [159.5, 122.2], [129.5, 157.9], [95.0, 177.3], [160.8, 177.0]])
ALIGNED_SIDE = 256


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """[5, 2] eye centres, nose tip (30) and mouth corners (48, 54) from 68 landmarks."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(68, 2)
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def aligned_five_points(side: int) -> np.ndarray:
    """The five points of a frontal face in an aligned crop of ``side`` pixels, where no landmarks are known."""
    return (ALIGNED_FIVE + 0.5) * (side / ALIGNED_SIDE) - 0.5


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The [2, 3] similarity (rotation, uniform scale, shift) taking ``src`` [N, 2] closest to ``dst``
    in least squares (Umeyama 1991, as ``skimage.transform.SimilarityTransform.estimate``)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(cov) < 0:
        sign[1] = -1
    rot = u @ np.diag(sign) @ vt
    var = (s ** 2).sum() / len(src)
    scale = (sig * sign).sum() / var if var > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def arcface_template(preprocessing: dict | None = None) -> tuple[np.ndarray, int]:
    """(the five template points [5, 2], the side of their crop): a model's registry ``preprocess``
    table, by default insightface's (112 px)."""
    from agetool.weights.registry import preprocessing as registered

    p = preprocessing or registered(ENTRY)
    return np.asarray(p["template"], np.float64), int(p["size"])


def arcface_crop(image: np.ndarray, points: np.ndarray, size: int | None = None,
                 preprocessing: dict | None = None) -> np.ndarray:
    """The [size, size, 3] crop of RGB ``image`` with ``points`` [5, 2] on the ArcFace template
    (``arcface_template(preprocessing)``, scaled to ``size``; default: the template's own side)."""
    import cv2

    base, side = arcface_template(preprocessing)
    size = side if size is None else size
    template = base * (size / side)
    m = similarity_transform(points, template)
    return cv2.warpAffine(np.ascontiguousarray(image), m, (size, size), borderValue=0.0)


class IdentityEmbedder:
    """An ArcFace-type ONNX model: ``embed(images, points)`` -> L2-normalized embeddings [N, D]."""

    def __init__(self, session, mean: float, std: float, preprocessing: dict | None = None):
        from agetool.nn.onnxrt import fixed_batch, input_side
        from agetool.weights.registry import preprocessing as registered

        self.preprocessing = dict(preprocessing or registered(ENTRY))  # the entry's template and size
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.input_size = input_side(session, int(self.preprocessing["size"]))
        self.batch = fixed_batch(session) or 16
        self.mean, self.std = mean, std
        self.path = None

    @classmethod
    def open(cls, name: str, path: str | os.PathLike | None = None, *, device=None, loading: Loading = LOADING,
             argument: str = "identity_model", file_argument: str | None = None) -> "IdentityEmbedder":
        """From ``path``, or the registry artifact ``name``, on ``device``'s onnxruntime provider
        (``file_argument``: the caller's argument that takes the file instead, for messages)."""
        from agetool import weights
        from agetool.nn import onnxrt

        path = weights.resolve(name, path, argument=argument, loading=loading, file_argument=file_argument)
        session = onnxrt.session(path, argument=argument, device=device)
        mean, std = (0.0, 1.0) if onnxrt.graph_normalizes(path) else (127.5, 127.5)
        from agetool.weights.registry import preprocessing

        embedder = cls(session, mean, std, preprocessing(name))
        embedder.path = path
        return embedder

    def prepare(self, images, points) -> np.ndarray:
        """The network input [N, 3, S, S] float32 for RGB ``images`` with their five ``points`` each."""
        crops = np.stack([arcface_crop(im, pts, self.input_size, self.preprocessing)
                          for im, pts in zip(images, points)])
        blob = (crops.astype(np.float32) - np.float32(self.mean)) * np.float32(1.0 / self.std)
        return np.ascontiguousarray(blob.transpose(0, 3, 1, 2))

    def embed(self, images, points) -> np.ndarray:
        """L2-normalized embeddings [N, D] (float64) of ``images`` (RGB uint8), ``points`` [N, 5, 2]."""
        images = list(images)
        points = list(points)
        if len(points) != len(images):
            raise ValueError("one set of five points per image")
        out = []
        for i in range(0, len(images), self.batch):
            blob = self.prepare(images[i:i + self.batch], points[i:i + self.batch])
            out.append(np.asarray(self.session.run(None, {self.input_name: blob})[0], dtype=np.float64))
        emb = np.concatenate(out).reshape(len(images), -1)
        norm = np.linalg.norm(emb, axis=1, keepdims=True)
        return emb / np.maximum(norm, 1e-12)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of embeddings ``a`` [D] and each row of ``b`` [N, D] (or one vector)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a)
    nb = np.linalg.norm(b, axis=-1)
    return (b @ a) / np.maximum(na * nb, 1e-12)
