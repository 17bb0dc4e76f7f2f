"""The PostgreSQL implementation of the store interface, for batches that several
``batchgen`` processes, on one host or several, work together.

``store`` (``PostgresStore``: the ``JobStore`` contract, with claims as data), ``slots``
(``KeySlots``: a key's request limit shared by every host), ``db`` (URLs, connecting,
the schema and its version, errors as ours), ``rows``, ``writer`` and ``queries`` (every
SQL statement, from ``queries.sql``).
"""
