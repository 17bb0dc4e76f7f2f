"""`make demo`: start the simulator, run the example manifest, stop the simulator."""

from __future__ import annotations

import sys


def main() -> int:
    print("batchgen demo: not wired yet", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
