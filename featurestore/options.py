"""Extractor options as one typed, frozen value: the allowed values are declared here, once.

:class:`ExtractorOptions` is what a user chooses (backbone, nodes, pooling, weights, input size,
precision, JPEG decode mode). It is checked when it is made, travels unchanged from the command
line through the library, and turns into JSON and back for saved heads and reports.
:func:`featurestore.extractor.resolve` turns it into an :class:`~featurestore.extractor.Extractor`
(the fingerprinted spec) once per run. The command line builds its ``click.Choice`` lists from
the tuples below, so a new value is added in one place.

:class:`WeightsChoice` is the ``--weights`` value parsed once: ``default`` (the backbone's
pretrained weights), ``none`` (seeded random initialisation) or a local file.

Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from featurestore.errors import BackboneError, OptionError

__all__ = [
    "DECODES",
    "POOLINGS",
    "PRECISIONS",
    "VIEW_POLICIES",
    "ExtractorOptions",
    "WeightsChoice",
    "check_view_policy",
    "split_backbones",
]

POOLINGS = ("avg", "max", "flatten", "none")
PRECISIONS = ("fp32", "bf16", "fp16")
DECODES = ("draft", "full")
#: Augmented views of each image (``featurestore.views``): 2, 10 and 16 views per image.
VIEW_POLICIES = ("flip", "crops10", "random16")
#: Joins backbones whose rows are concatenated column-wise (``alexnet+vgg16``).
COMBO_SEPARATOR = "+"


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise OptionError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def check_view_policy(value: str | None) -> str | None:
    """``value`` if it names a view policy (or is ``None``: no views); else :class:`OptionError`."""
    if value is not None:
        _check_choice("views", value, VIEW_POLICIES)
    return value


@dataclass(frozen=True)
class WeightsChoice:
    """Which weights: ``kind`` is ``default``, ``none`` or ``file`` (then ``path`` is set)."""

    kind: str = "default"
    path: Path | None = None

    @classmethod
    def parse(cls, value: str | Path | WeightsChoice | None) -> WeightsChoice:
        """``"default"``/``None``, ``"none"`` (any case) or a file path."""
        if isinstance(value, WeightsChoice):
            return value
        if value is None or (isinstance(value, str) and value == "default"):
            return cls("default")
        if isinstance(value, str) and value.lower() == "none":
            return cls("none")
        if isinstance(value, str) and not value.strip():
            raise OptionError("--weights is empty; give 'default', 'none' or a file path")
        return cls("file", Path(value))

    def __str__(self) -> str:
        return str(self.path) if self.kind == "file" else self.kind


@dataclass(frozen=True)
class ExtractorOptions:
    """What a user chooses about an extractor; checked on creation, hashable, JSON-able.

    ``nodes`` empty means the backbone's default node; ``pooling`` ``None`` means the default
    for the node (none for the default node, avg for others); ``input_size`` ``None`` means the
    backbone's own crop.
    """

    backbone: str
    nodes: tuple[str, ...] = ()
    pooling: str | None = None
    weights: WeightsChoice = field(default_factory=WeightsChoice)
    input_size: int | None = None
    precision: str = "fp32"
    decode: str = "draft"

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, str) or not self.backbone.strip():
            raise BackboneError(f"a backbone name is required, got {self.backbone!r}")
        if COMBO_SEPARATOR in self.backbone:
            raise BackboneError(
                f"{self.backbone!r} names several backbones; one extractor has one backbone "
                "(concatenations are for load_features and sweep --combo)"
            )
        object.__setattr__(self, "nodes", tuple(self.nodes or ()))
        object.__setattr__(self, "weights", WeightsChoice.parse(self.weights))
        if self.pooling is not None:
            _check_choice("pooling", self.pooling, POOLINGS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("decode", self.decode, DECODES)
        if self.input_size is not None and (
            isinstance(self.input_size, bool) or not isinstance(self.input_size, int)
        ):
            raise OptionError(f"input_size must be an integer, got {self.input_size!r}")

    @classmethod
    def make(cls, backbone: str, **options: Any) -> ExtractorOptions:
        """Options from keyword arguments as the API takes them (``nodes`` a list or None,
        ``weights`` a string or path); unknown keywords are an error."""
        allowed = {"nodes", "pooling", "weights", "input_size", "precision", "decode"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise TypeError(f"unknown extractor option(s) {unknown}; allowed: {sorted(allowed)}")
        given = {k: v for k, v in options.items() if v is not None}
        if "nodes" in given:
            given["nodes"] = tuple(given["nodes"])
        return cls(backbone, **given)

    def with_backbone(self, backbone: str) -> ExtractorOptions:
        """The same options for another backbone (one part of a concatenation)."""
        return replace(self, backbone=backbone)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: the saved-head sidecar and reports hold this."""
        return {
            "backbone": self.backbone,
            "nodes": list(self.nodes),
            "pooling": self.pooling,
            "weights": str(self.weights),
            "input_size": self.input_size,
            "precision": self.precision,
            "decode": self.decode,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExtractorOptions:
        """Inverse of :meth:`to_json`; missing keys take their defaults, unknown keys are an
        error (a sidecar from a newer featurestore is refused, not half-read)."""
        if not isinstance(data, dict):
            raise BackboneError(f"extractor options must be a JSON object, got {data!r}")
        data = dict(data)
        backbone = data.pop("backbone", None)
        if not isinstance(backbone, str):
            raise BackboneError(f"extractor options name no backbone: {data!r}")
        try:
            return cls.make(backbone, **data)
        except TypeError as exc:
            raise BackboneError(str(exc)) from None

    def cli_args(self) -> list[str]:
        """The ``featurestore extract`` options that give these options."""
        args = ["--backbone", self.backbone]
        for node in self.nodes:
            args += ["--node", node]
        if self.pooling is not None:
            args += ["--pooling", self.pooling]
        if self.weights.kind != "default":
            args += ["--weights", str(self.weights)]
        if self.input_size is not None:
            args += ["--input-size", str(self.input_size)]
        if self.precision != "fp32":
            args += ["--precision", self.precision]
        if self.decode != "draft":
            args += ["--decode", self.decode]
        return args


def split_backbones(backbone: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"alexnet+vgg16"`` or a list -> the backbone names, in column order."""
    if isinstance(backbone, str):
        names = [b.strip() for b in backbone.split(COMBO_SEPARATOR)]
    else:
        names = [str(b).strip() for b in backbone]
    if not names or any(not n for n in names):
        raise BackboneError(f"bad backbone list {backbone!r} (expected e.g. 'alexnet+vgg16')")
    return names
