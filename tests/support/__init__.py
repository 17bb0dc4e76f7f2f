"""Plain helpers the tests share, one module per purpose (fixtures live in conftest.py).

- `paths`: where the repository's own files are (README, examples, manifests).
- `manifests`: manifest files written for a test, and the images they point at.
- `engine`: batches written straight into the state DB, and one engine run (`Drive`).
- `simapi`: raw HTTP to the simulator, the way any user's pipeline talks to it.
- `reports`: the demo batch the report and export tests share.
- `processes`: the `batchgen` command as a subprocess (cron's environment, a webhook receiver).
- `runs`: `run_batch` called as a library, and what its observers saw.
- `metrics`: parsing the Prometheus textfile.
"""
