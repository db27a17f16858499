"""``python -m featurestore.cli``: the ``featurestore`` command."""

from featurestore.cli import main

main(prog_name="featurestore")
