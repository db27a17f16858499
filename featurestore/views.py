"""Views: K deterministic augmented copies of each image, each cached like a plain row.

A *view policy* names K views of an image; view ``i`` is a pure function of (decoded image,
policy, ``i``) and of the extractor's preprocessing, never of the worker, the batch or the run.
Every view starts from the *base*: the decoded image resized so that its shorter side is the
backbone's resize size (the eval transform's first step, done once per image). Then:

``flip`` (2 views)
    0: the centre crop (the plain eval transform); 1: its horizontal mirror.
``crops10`` (10 views)
    0: centre, 1: top-left, 2: top-right, 3: bottom-left, 4: bottom-right crop of the base at
    the crop size (the boxes of :func:`crops10_box`); 5-9: the horizontal mirrors of 0-4.
    Where the base is only as wide (or high) as the crop, some crops coincide.
``random16`` (16 views)
    0: the centre crop; 1-15: a resized crop of the base (area 25-100% of the base, aspect
    ratio 3/4 to 4/3) scaled to the crop size with the backbone's interpolation, mirrored for
    odd ``i``, then brightness, contrast and saturation factors in [0.8, 1.2] in that order.
    The parameters (:func:`random16_params`) are drawn from a generator seeded with
    ``sha256("featurestore.views:random16:<i>")``, in fractions of the base's size, so view ``i``
    is the same transform on every image.

The ops are torchvision's ``transforms.v2.functional`` on the decoded image (PIL for the resize,
uint8 tensors after it), imported only when a view is rendered: this module itself imports no
torch, so a run whose views are all cached never loads it.

**Stores.** The rows of view ``i`` live in the store of the extractor spec plus
``{"view": {"policy": NAME, "index": i}}`` (:meth:`ViewPolicy.spec`): one ordinary store per
(extractor, view), so views are cached, resumable, crash-safe and shared exactly like plain rows,
and the plain store's format and fingerprints do not change. View 0 of every policy is the plain
eval transform, so its spec *is* the plain spec: its rows are the plain rows, in the plain
store. A view that two policies share is stored once, under one name: ``flip``'s mirror is
``crops10``'s view 5 (the mirrored centre crop). A policy's views never change; a different
definition would get a new policy name.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.errors import OptionError
from featurestore.options import VIEW_POLICIES, check_view_policy

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from featurestore.extractor import Preprocess
    from featurestore.store import FeatureStore

__all__ = [
    "POLICIES",
    "RandomView",
    "ViewAveraged",
    "ViewPolicy",
    "ViewTodo",
    "average_views",
    "crops10_box",
    "get_policy",
    "random16_box",
    "random16_params",
    "render_base",
    "render_plain",
    "render_views",
]

# What random16's views draw from (see the module docstring).
RANDOM16_SCALE = (0.25, 1.0)
RANDOM16_RATIO = (3 / 4, 4 / 3)
RANDOM16_JITTER = (0.8, 1.2)


def _functional() -> Any:
    """torchvision's ``transforms.v2.functional``, imported on first use."""
    from torchvision.transforms.v2 import functional

    return functional


def _interpolation(name: str) -> Any:
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(name)


# ------------------------------------------------------------------------------------ geometry
def crops10_box(index: int, height: int, width: int, crop: int) -> tuple[int, int, bool]:
    """(top, left, mirrored) of ``crops10``'s view ``index`` on a ``height`` x ``width`` base.

    The centre box is torchvision's ``center_crop``'s (``round((height - crop) / 2)``, same for
    the width); the corners sit flush with the base's edges.
    """
    if not 0 <= index < 10:
        raise OptionError(f"crops10 has views 0-9, got {index}")
    dy, dx = height - crop, width - crop
    top, left = [
        (round(dy / 2.0), round(dx / 2.0)),
        (0, 0),
        (0, dx),
        (dy, 0),
        (dy, dx),
    ][index % 5]
    return top, left, index >= 5


@dataclass(frozen=True)
class RandomView:
    """The parameters of one ``random16`` view, in fractions of the base (image-independent).

    ``scale``: the crop's share of the base's area; ``log_ratio``: log of its width/height;
    ``u``, ``v``: where the crop sits along the free width and height (0 = left/top edge);
    ``mirrored``; ``brightness``, ``contrast``, ``saturation``: the colour factors (1 = none).
    """

    scale: float
    log_ratio: float
    u: float
    v: float
    mirrored: bool
    brightness: float
    contrast: float
    saturation: float


def _seed(policy: str, index: int) -> int:
    digest = hashlib.sha256(f"featurestore.views:{policy}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def random16_params(index: int) -> RandomView | None:
    """The parameters of ``random16``'s view ``index`` (``None`` for view 0, the centre crop)."""
    if not 0 <= index < 16:
        raise OptionError(f"random16 has views 0-15, got {index}")
    if index == 0:
        return None
    rng = random.Random(_seed("random16", index))
    scale = rng.uniform(*RANDOM16_SCALE)
    log_ratio = rng.uniform(math.log(RANDOM16_RATIO[0]), math.log(RANDOM16_RATIO[1]))
    u, v = rng.random(), rng.random()
    b, c, s = (rng.uniform(*RANDOM16_JITTER) for _ in range(3))
    return RandomView(scale, log_ratio, u, v, index % 2 == 1, b, c, s)


def random16_box(params: RandomView, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of a ``random16`` view on a ``height`` x ``width``
    base: the area and aspect ratio of ``params``, clipped to the base."""
    area = params.scale * height * width
    ratio = math.exp(params.log_ratio)
    w = min(width, max(1, round(math.sqrt(area * ratio))))
    h = min(height, max(1, round(math.sqrt(area / ratio))))
    return round(params.v * (height - h)), round(params.u * (width - w)), h, w


# ------------------------------------------------------------------------------------ rendering
def render_base(image: Image.Image, pre: Preprocess) -> torch.Tensor:
    """The base every view starts from: ``image`` resized (antialiased, ``pre.interpolation``;
    the shorter side to ``pre.resize_size``, or both sides when ``pre.crop_mode`` is "squash",
    timm's crop mode) as a (3, H, W) uint8 tensor."""
    F = _functional()
    size = [pre.resize_size] * (2 if pre.crop_mode == "squash" else 1)
    base = F.resize(image, size, interpolation=_interpolation(pre.interpolation), antialias=True)
    return F.pil_to_tensor(base)


def _centre(base: torch.Tensor, crop: int) -> torch.Tensor:
    return _functional().center_crop(base, [crop])


def _flip_view(base: torch.Tensor, index: int, pre: Preprocess) -> torch.Tensor:
    return _crops10_view(base, 5 * index, pre)  # 0: centre, 1: mirrored centre


def _crops10_view(base: torch.Tensor, index: int, pre: Preprocess) -> torch.Tensor:
    F = _functional()
    c = pre.crop_size
    if index % 5 == 0:
        out = _centre(base, c)  # also pads a base smaller than the crop, as the eval transform
    else:
        top, left, _ = crops10_box(index, base.shape[-2], base.shape[-1], c)
        out = F.crop(base, top, left, c, c)
    return F.horizontal_flip(out) if index >= 5 else out


def _random16_view(base: torch.Tensor, index: int, pre: Preprocess) -> torch.Tensor:
    params = random16_params(index)
    if params is None:
        return _centre(base, pre.crop_size)
    F = _functional()
    top, left, h, w = random16_box(params, base.shape[-2], base.shape[-1])
    size = [pre.crop_size, pre.crop_size]
    interp = _interpolation(pre.interpolation)
    out = F.resized_crop(base, top, left, h, w, size, interpolation=interp, antialias=True)
    if params.mirrored:
        out = F.horizontal_flip(out)
    out = F.adjust_brightness(out, params.brightness)
    out = F.adjust_contrast(out, params.contrast)
    return F.adjust_saturation(out, params.saturation)


# ------------------------------------------------------------------------------------ policies
ViewFn = Callable[["torch.Tensor", int, "Preprocess"], "torch.Tensor"]


@dataclass(frozen=True)
class ViewPolicy:
    """A named set of ``n_views`` views; view 0 is always the plain eval transform.

    ``stored_as[i]``: the (policy, index) that names view ``i``'s store (``None`` for view 0,
    which is stored as the plain rows); a view two policies share is stored under one name.
    """

    name: str
    n_views: int
    description: str
    render: ViewFn
    stored_as: tuple[tuple[str, int] | None, ...]

    def spec(self, spec: dict[str, Any], index: int) -> dict[str, Any]:
        """The fingerprinted spec of view ``index``'s rows: the plain ``spec`` for view 0, else
        ``spec`` plus ``{"view": {"policy": ..., "index": ...}}``."""
        if not 0 <= index < self.n_views:
            raise OptionError(f"{self.name} has views 0-{self.n_views - 1}, got {index}")
        name = self.stored_as[index]
        if name is None:
            return spec
        return {**spec, "view": {"policy": name[0], "index": name[1]}}

    def specs(self, spec: dict[str, Any]) -> list[dict[str, Any]]:
        """The spec of every view, in view order (element 0 is ``spec`` itself)."""
        return [self.spec(spec, i) for i in range(self.n_views)]


def _own_names(policy: str, n: int) -> tuple[tuple[str, int] | None, ...]:
    return (None, *((policy, i) for i in range(1, n)))


POLICIES: dict[str, ViewPolicy] = {
    p.name: p
    for p in (
        ViewPolicy("flip", 2, "centre crop and its mirror", _flip_view, (None, ("crops10", 5))),
        ViewPolicy(
            "crops10",
            10,
            "centre and four corner crops, each also mirrored",
            _crops10_view,
            _own_names("crops10", 10),
        ),
        ViewPolicy(
            "random16",
            16,
            "centre crop and 15 seeded random resized crops with flips and mild colour jitter",
            _random16_view,
            _own_names("random16", 16),
        ),
    )
}
if tuple(POLICIES) != VIEW_POLICIES:  # pragma: no cover - the names are declared in options
    raise ImportError(f"view policies {tuple(POLICIES)} differ from options {VIEW_POLICIES}")


def get_policy(name: str | ViewPolicy) -> ViewPolicy:
    """The policy called ``name`` (one of :data:`~featurestore.options.VIEW_POLICIES`)."""
    if isinstance(name, ViewPolicy):
        return name
    check_view_policy(name)
    return POLICIES[name]


def render_views(
    image: Image.Image, pre: Preprocess, policy: ViewPolicy, indices: Sequence[int]
) -> list[torch.Tensor]:
    """Views ``indices`` of ``policy`` of one decoded image, each a (3, crop, crop) uint8 tensor
    (the base is computed once)."""
    base = render_base(image, pre)
    return [policy.render(base, i, pre) for i in indices]


def render_plain(image: Image.Image, pre: Preprocess) -> torch.Tensor:
    """The plain eval transform (every policy's view 0) of one decoded image."""
    return _centre(render_base(image, pre), pre.crop_size)


# ------------------------------------------------------------------------------------ a run
@dataclass(frozen=True)
class ViewTodo:
    """The (image, view) pairs one run computes: ``wants[j]`` lists the views of the run's
    record ``j`` that are missing, in view order; ``stores[i]`` is view ``i``'s store."""

    policy: ViewPolicy
    stores: tuple[FeatureStore, ...]
    wants: tuple[tuple[int, ...], ...]

    @property
    def n_pairs(self) -> int:
        return sum(len(w) for w in self.wants)


# ------------------------------------------------------------------------------------ scores
def average_views(scores: np.ndarray, keys: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Test-time averaging: the mean of the rows of ``scores`` that share an image key.

    ``scores``: (n_rows, ...) per-row scores (decision values or probabilities), ``keys`` the
    image key of each row (``Features.keys``). Returns (per-image scores, the keys in order of
    first appearance). Images with fewer views than others are averaged over what they have.
    """
    scores = np.asarray(scores)
    if len(scores) != len(keys):
        raise ValueError(f"{len(scores)} score rows for {len(keys)} keys")
    order: dict[str, int] = {}
    inverse = np.fromiter((order.setdefault(k, len(order)) for k in keys), np.int64, len(keys))
    out = np.zeros((len(order), *scores.shape[1:]), dtype=np.float64)
    np.add.at(out, inverse, scores)
    counts = np.bincount(inverse, minlength=len(order)).astype(np.float64)
    out /= counts.reshape(-1, *([1] * (scores.ndim - 1)))
    return out, list(order)


class ViewAveraged:
    """A fitted head scored with test-time averaging, on input shaped (images, views, D).

    ``decision_function`` and ``predict_proba`` are the head's, averaged over each image's
    views; ``predict`` is the class with the highest averaged score: the decision values when
    the head has them (a binary head's one column: positive means ``classes_[1]``), else the
    probabilities, else the most frequent of the views' predictions (ties: the class first in
    ``classes_``). So a head that predicts by ``argmax(decision_function)``, the project's
    heads and their probability calibrations alike, predicts the same class with one view.
    """

    def __init__(self, head: Any) -> None:
        self.head = head
        self.classes_ = np.asarray(head.classes_)

    def _rows(self, X: Any) -> tuple[np.ndarray, int, int]:
        X = np.asarray(X)
        if X.ndim != 3:
            raise ValueError(f"expected (images, views, features), got shape {X.shape}")
        n, k = X.shape[:2]
        return X.reshape(n * k, X.shape[2]), n, k

    def _mean(self, method: str, X: Any) -> np.ndarray:
        rows, n, k = self._rows(X)
        scores = np.asarray(getattr(self.head, method)(rows), dtype=np.float64)
        return scores.reshape(n, k, *scores.shape[1:]).mean(axis=1)

    def __getattr__(self, name: str) -> Any:
        """``decision_function`` and ``predict_proba``: the head's, averaged over each image's
        views; each exists only where the head has it (so ``hasattr`` answers for the head, and
        a linear SVM's average is scored by its decision values, not by probabilities it
        lacks)."""
        head = self.__dict__.get("head")  # absent while unpickling
        if name in ("decision_function", "predict_proba") and _has(head, name):
            return lambda X: self._mean(name, X)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def predict(self, X: Any) -> np.ndarray:
        """One class per image (see the class docstring for the rule)."""
        for method in ("decision_function", "predict_proba"):
            if _has(self.head, method):
                scores = self._mean(method, X)
                if scores.ndim == 1:
                    return self.classes_[(scores > 0).astype(int)]
                return self.classes_[scores.argmax(axis=1)]
        rows, n, k = self._rows(X)
        votes = np.asarray(self.head.predict(rows)).reshape(n, k)
        index = {c: i for i, c in enumerate(self.classes_.tolist())}
        counts = np.zeros((n, len(index)), dtype=np.int64)
        for i, row in enumerate(votes.tolist()):
            for c in row:
                counts[i, index[c]] += 1
        return self.classes_[counts.argmax(axis=1)]


def _has(estimator: Any, method: str) -> bool:
    """Whether ``estimator`` offers ``method`` (a pipeline answers for its last step)."""
    try:
        return callable(getattr(estimator, method))
    except AttributeError:
        return False
