"""``batchgen sim``: a local server that behaves like the Runbase runs API.

Use it from tests and scripts as an async context manager::

    async with Simulator(SimConfig(time_scale=0.01)) as sim:
        ...  # talk to sim.base_url with the key DEFAULT_KEY; read sim.stats()

or from the shell: ``batchgen sim --port 0`` (see docs/sim.md).
"""

from batchgen.sim.config import DEFAULT_KEY, SimConfig
from batchgen.sim.server import Simulator

__all__ = ["DEFAULT_KEY", "SimConfig", "Simulator"]
