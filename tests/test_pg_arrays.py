"""actors/storage/pg_arrays.py against a real server: what goes in as a binary array
comes back out of PostgreSQL element for element (NULLs, empty arrays, any bytes, any
text), for arrays Hypothesis makes up."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.storage import pg_arrays
from actors.storage.pg_arrays import bytea_array, text_array, uuid_array


@pytest.fixture(scope="module")
def conn(pg_server):
    with psycopg.connect(pg_server.dsn, autocommit=True) as c:
        pg_arrays.register(c)
        yield c


def test_edge_cases_come_back_as_sent(conn):
    cases = [[], [b""], [None], [b"\x00" * 3, None, b"\xff" * 70_000], [bytes(range(256))]]
    for values in cases:
        got = conn.execute("SELECT %(a)b::bytea[]", {"a": bytea_array(values)}).fetchone()[0]
        assert got == values
    text = ["", "é — 株式会社", "a" * 10_000, "tab\tand\nnewline"]
    assert conn.execute("SELECT %(a)b::text[]", {"a": text_array(text)}).fetchone()[0] == text


def test_unnest_keeps_the_order_of_parallel_arrays(conn):
    rows = conn.execute(
        "SELECT h, k FROM unnest(%(h)b::bytea[], %(k)b::text[]) WITH ORDINALITY AS t(h, k, o) "
        "ORDER BY o", {"h": bytea_array([b"a", b"b", None]),
                       "k": text_array(["x", "y", "z"])}).fetchall()
    assert rows == [(b"a", "x"), (b"b", "y"), (None, "z")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.none(), st.binary(max_size=64)), max_size=40),
       st.lists(st.text(alphabet=st.characters(blacklist_characters="\x00",
                                               blacklist_categories=("Cs",)),
                        max_size=30), max_size=40))
def test_any_array_round_trips(conn, blobs, texts):
    got = conn.execute("SELECT %(b)b::bytea[], %(t)b::text[]",
                       {"b": bytea_array(blobs), "t": text_array(texts)}).fetchone()
    assert got == (blobs, texts)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(min_size=16, max_size=16), max_size=40))
def test_uuid_arrays_are_the_16_bytes_in_order(conn, values):
    got = conn.execute("SELECT array(SELECT uuid_send(u) FROM unnest(%(a)b::uuid[]) u)",
                       {"a": uuid_array(values)}).fetchone()[0]
    assert got == values


def test_a_uuid_of_another_length_is_refused_before_it_is_sent():
    with pytest.raises(ValueError, match="16 bytes"):
        uuid_array([b"x" * 16, b"short"])
