"""Plain helpers the tests share, one module per purpose (fixtures live in conftest.py).

- `paths`: where the repository's own files are (README, examples, manifests).
- `manifests`: manifest files written for a test, and the images they point at.
- `engine`: batches written straight into the state DB, and one engine run (`Drive`).
- `stored`: reading and moving a stored batch's jobs in the state DB.
- `simapi`: raw HTTP to the simulator, the way any user's pipeline talks to it.
- `files`: a loopback file server with scriptable faults, and a real MP4 maker.
- `reports`: the demo batch the report and export tests share, and layout helpers.
- `processes`: the `batchgen` command as a subprocess (cron's environment, a webhook receiver).
- `runs`: `run_batch` called as a library, and what its observers saw.
- `money`: lost runs, crashed POSTs, and the money check issue 9 is judged by.
- `nightly`: the dated nightly batch and the shipped cron example.
- `observe`: parsing the Prometheus textfile, progress snapshots, the summary trail.
- `secrets`, `terminal`: planted secrets, hostile text, and checks that neither leaks.
- `ratelimit`: counting requests in sliding windows.
- `answers`: the API's run record as the engine's fake clients answer it.
- `waiting`: waiting on a condition with a deadline instead of a fixed sleep.
- `postgres`: a real PostgreSQL server for the tests (throwaway, shared by xdist workers).
- `pgkit`: a PostgreSQL store's rows set up and read beside the store (contract, leases).
"""
