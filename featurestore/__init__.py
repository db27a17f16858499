"""featurestore: frozen-backbone image features, extracted once into a content-keyed HDF5 store.

Public API::

    from featurestore import extract, load_features
    result = extract("images/", backbone="efficientnet_lite0")
    feats = load_features("images/", backbone="efficientnet_lite0", split="train")
    feats.X, feats.y, feats.keys, feats.class_names

The store side (``featurestore.store``) needs only numpy and h5py; torch loads only when
:func:`extract` or :func:`load_features` has an image to extract (a run whose rows are all
cached never imports it).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from featurestore.provenance import VERSION as __version__

# As ``classifiers`` does on import (see classifiers.linear, "The same numbers under any load"):
# set before the first MKL call, which extraction in this process may make before any head.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__all__ = ["__version__", "extract", "load_features", "open_source"]

if TYPE_CHECKING:
    from featurestore.api import load_features
    from featurestore.extraction import extract
    from featurestore.sources import open_source


def __getattr__(name: str) -> Any:
    if name == "extract":
        from featurestore.extraction import extract

        return extract
    if name == "load_features":
        from featurestore.api import load_features

        return load_features
    if name == "open_source":
        from featurestore.sources import open_source

        return open_source
    raise AttributeError(name)
