"""batchgen: paid video generation sweeps on the Runbase runs API, done right.

The library's public names are in ``batchgen.api`` (``load_manifest``, ``build_plan``,
``run_batch``, ``write_report``, ``Simulator``...). This package itself holds only the
version, so that ``import batchgen`` and ``batchgen --help`` stay instant.
"""

__version__ = "0.1.0"
