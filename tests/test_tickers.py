"""Tickers named in press-release text."""

import time

import pytest

from actors.feeds.tickers import MAX_TICKERS, extract_tickers


@pytest.mark.parametrize("text, expected", [
    ("Acme Bio, Inc. (NASDAQ: ABCD) today announced", ["ABCD"]),
    ("Acme Bio, Inc. (Nasdaq: ABCD) today announced", ["ABCD"]),
    ("Nasdaq: ABCD", ["ABCD"]),
    ("NASDAQ:ABCD", ["ABCD"]),
    ("(Nasdaq GS: ABCD)", ["ABCD"]),
    ("(NYSE: XYZ)", ["XYZ"]),
    ("(NYSE American: ABC)", ["ABC"]),
    ("(NYSE MKT: ABC)", ["ABC"]),
    ("(NYSE Arca: ARCX)", ["ARCX"]),
    ("(AMEX: ABC)", ["ABC"]),
    ("(TSX: AB)", ["AB"]),
    ("(TSXV: AB)", ["AB"]),
    ("(TSX-V: AB)", ["AB"]),
    ("(TSX Venture: AB)", ["AB"]),
    ("(CSE: AB)", ["AB"]),
    ("(TSXV: ABC.U)", ["ABC.U"]),
])
def test_exchange_qualified_symbols_are_found(text, expected):
    assert extract_tickers(text) == expected


def test_several_exchanges_in_one_parenthesis_keep_their_order():
    assert extract_tickers("Maple Gold (NASDAQ: ABCD; TSX: AB) and (NYSE: XYZ, TSXV: QRS)") == [
        "ABCD", "AB", "XYZ", "QRS"]


def test_a_list_after_one_exchange_gives_every_symbol():
    assert extract_tickers("(NASDAQ: ABCD, ABCDW)") == ["ABCD", "ABCDW"]
    assert extract_tickers("(Nasdaq: ABCD and ABCDW)") == ["ABCD", "ABCDW"]


def test_class_shares_keep_their_suffix():
    assert extract_tickers("Berkshire (NYSE: BRK.B) and Brown-Forman (NYSE: BF-B)") == ["BRK.B", "BF-B"]


def test_cashtags_but_not_dollar_amounts():
    assert extract_tickers("$ACMB jumps after $5 raise of $1.2 million; $TSLA flat") == ["ACMB", "TSLA"]
    assert extract_tickers("costs $5.00 and US$3 billion") == []


def test_otc_symbols_only_when_asked():
    text = "Tiny Co (OTCQB: TINYF) (OTCQX: QXCO) (OTC Pink: PNKC) (OTC: OTCC) (TSXV: TINY)"
    assert extract_tickers(text) == ["TINY"]
    assert extract_tickers(text, include_otc=True) == ["TINYF", "QXCO", "PNKC", "OTCC", "TINY"]


def test_ordered_unique_and_upper_case():
    text = "$ABCD rises. Acme (NASDAQ: ABCD) and Beta (NYSE: BETA); again $BETA and (NASDAQ: ABCD)"
    assert extract_tickers(text) == ["ABCD", "BETA"]


@pytest.mark.parametrize("text", [
    "Listed on Nasdaq: Shares rose 10%",
    "NYSE: The company said",
    "(NASDAQ: ABCDEFG)",
    "Revenue of $12 million at 3:30 p.m.",
    "Ratio 3:1, time 10:00",
    "",
])
def test_prose_gives_no_ticker(text):
    assert extract_tickers(text) == []


def test_ticker_count_is_bounded():
    text = " ".join(f"$T{chr(65 + i // 26)}{chr(65 + i % 26)}" for i in range(100))
    assert len(extract_tickers(text)) == MAX_TICKERS


def test_extraction_is_fast_on_long_text():
    text = ("Acme Bio (NASDAQ: ABCD) reports a 12% rise; CEO said: results at 10:00 were good. " * 200)
    started = time.perf_counter()
    for _ in range(50):
        assert extract_tickers(text) == ["ABCD"]
    assert (time.perf_counter() - started) / 50 < 0.01
