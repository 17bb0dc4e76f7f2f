"""batchgen: paid video generation sweeps on the Runbase runs API, done right."""

__version__ = "0.1.0"
