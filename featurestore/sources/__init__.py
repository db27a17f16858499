"""Image sources -> records (image key, label, split, path).

One module per kind, each with its scanner and its loader side by side:

* :mod:`~featurestore.sources.folder`: a folder in ImageFolder layout: ``ROOT/CLASS/*.jpg``, or
  with split folders ``ROOT/{train,val,validation,test}/CLASS/*.jpg``; images directly in
  ``ROOT`` get no label;
* :mod:`~featurestore.sources.manifest`: a CSV manifest ``path,label[,split]`` (header optional;
  paths relative to the CSV);
* :mod:`~featurestore.sources.arrays`: an HDF5 file of image arrays, or a folder of such files
  (image, label and class-name datasets are detected, or named with ``images_key``/
  ``labels_key``);
* :mod:`~featurestore.sources.builtin`: ``builtin:digits``, scikit-learn's 1,797 8x8 digit
  images (ships with scikit-learn).

:mod:`~featurestore.sources.files` holds what the file kinds share (walking, hashing, loading a
file); :mod:`~featurestore.sources.records` the records; :mod:`~featurestore.sources.loading`
the :class:`ImageLoader` that hands each record to its kind's loader; and
:mod:`~featurestore.sources.opener` :func:`open_source`, which picks the kind.

Files that cannot be read are skipped and reported with their reason; decoding failures are
found later, in the extraction workers, and reported the same way.
"""

from __future__ import annotations

from featurestore.errors import SourceError
from featurestore.sources.arrays import from_hdf5
from featurestore.sources.builtin import BUILTINS, builtin
from featurestore.sources.files import from_image_file
from featurestore.sources.folder import SPLIT_NAMES, from_folder
from featurestore.sources.loading import ImageLoader, register_loader
from featurestore.sources.manifest import from_csv
from featurestore.sources.opener import open_source
from featurestore.sources.records import Record, Skipped, SkippedFiles, Source

__all__ = [
    "BUILTINS",
    "SPLIT_NAMES",
    "ImageLoader",
    "Record",
    "Skipped",
    "SkippedFiles",
    "Source",
    "SourceError",
    "builtin",
    "from_csv",
    "from_folder",
    "from_hdf5",
    "from_image_file",
    "open_source",
    "register_loader",
]
