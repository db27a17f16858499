"""``python -m featurestore.cli``: the ``featurestore`` command."""

from featurestore.cli.entry import run

run()
