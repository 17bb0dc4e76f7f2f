"""The tests' PostgreSQL: a real server (a throwaway one, or ``$BATCHGEN_TEST_POSTGRES``),
one fresh schema per test, reached over 127.0.0.1."""

from __future__ import annotations

import psycopg

from tests.support.postgres import TestServer


def test_a_real_server_answers_in_a_schema_of_the_tests_own(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        row = conn.execute("SELECT current_schema()").fetchone()
        assert row is not None and row[0].startswith("batchgen_test_")
        conn.execute("CREATE TABLE t (x int)")
        conn.commit()
        row = conn.execute("SELECT inet_server_addr()::text").fetchone()
        assert row is not None and row[0].startswith("127.0.0.1")


def test_each_test_gets_another_schema(postgres_server: TestServer, postgres_url: str) -> None:
    other = postgres_server.create_database()
    try:
        assert other != postgres_url
        with psycopg.connect(other) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.commit()
        with psycopg.connect(postgres_url) as conn:
            assert conn.execute("SELECT to_regclass('t') IS NULL").fetchone() == (True,)
    finally:
        postgres_server.drop_database(other)
