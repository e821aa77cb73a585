"""The offline keyword classifier, judged by what a trader sees in an alert."""

from __future__ import annotations

import random
import re

import msgspec
import pytest

from actors.classification import rules
from actors.protocol import Analysis, Item


def press_release(title: str, summary: str = "", tickers: list[str] | None = None) -> Item:
    return Item(key=f"https://wire.example/{abs(hash(title))}", title=title,
                link="https://wire.example/x", source="globenewswire", kind="pr",
                summary=summary, tickers=tickers or [])


def filing(form: str | None, company: str = "ACME BIO, INC.", summary: str = "") -> Item:
    return Item(key="sec:0001234567-24-000123", title=f"{form} - {company} (0001234567) (Filer)",
                link="https://www.sec.gov/Archives/edgar/data/1234567/x.htm", source="sec-current",
                kind="sec", form=form, summary=summary, tickers=["ACME"], cik="0001234567")


def valid(analysis: Analysis) -> Analysis:
    """Round-trips through msgpack with validation, as the llm -> alert socket would."""
    return msgspec.msgpack.Decoder(Analysis).decode(msgspec.msgpack.encode(analysis))


def test_fda_approval_headline_is_positive_and_material():
    a = rules.classify(press_release(
        "Acme Bio Announces FDA Approval of ZYX-101 for Relapsed Multiple Myeloma (NASDAQ: ACME)",
        "CAMBRIDGE, Mass., June 3, 2024 (GLOBE NEWSWIRE) -- Acme Bio, Inc. (NASDAQ: ACME) today "
        "announced that the U.S. Food and Drug Administration (FDA) has approved ZYX-101.",
        tickers=["ACME"]))
    assert a.category == "fda_approval"
    assert a.material and a.score >= 0.8
    assert a.sentiment > 0.5
    assert a.tickers == ["ACME"]
    assert "fda approval" in a.keywords
    assert a.provider == "rules"


def test_complete_response_letter_is_negative_fda_news():
    a = rules.classify(press_release(
        "Acme Bio Receives Complete Response Letter from FDA for ZYX-101 New Drug Application"))
    assert a.category == "fda_approval"
    assert a.material
    assert a.sentiment < -0.5


def test_failed_trial_is_negative_clinical_results():
    a = rules.classify(press_release(
        "Lambda Therapeutics Announces Topline Results from Phase 3 RESOLVE Trial of LT-9",
        "The trial did not meet its primary endpoint of progression-free survival. No new "
        "safety signals were observed."))
    assert a.category == "clinical_results"
    assert a.material
    assert a.sentiment < -0.3


def test_trial_that_met_its_primary_endpoint_is_positive_clinical_results():
    a = rules.classify(press_release(
        "Kappa Bio's Phase 3 Study Meets Primary Endpoint, Demonstrating Statistically "
        "Significant Improvement in Overall Survival"))
    assert a.category == "clinical_results"
    assert a.material and a.sentiment > 0.5


def test_negated_good_words_read_as_bad_news():
    a = rules.classify(press_release(
        "Omega Pharma Phase 2 Trial of OM-4 Did Not Achieve Statistical Significance"))
    assert a.category == "clinical_results"
    assert a.sentiment < 0


def test_no_adverse_events_does_not_count_against_a_trial():
    said_none = rules.classify(press_release(
        "Sigma Reports Interim Data from Phase 1 Study of SG-2",
        "No serious adverse events were reported."))
    said_some = rules.classify(press_release(
        "Sigma Reports Interim Data from Phase 1 Study of SG-2",
        "Two serious adverse events were reported."))
    assert said_none.category == said_some.category == "clinical_results"
    assert said_none.sentiment > said_some.sentiment


def test_public_offering_is_negative_dilution():
    a = rules.classify(press_release(
        "Acme Bio Announces Pricing of $50 Million Underwritten Public Offering of Common Stock",
        "Acme Bio intends to use the net proceeds to fund clinical development of ZYX-101."))
    assert a.category == "offering_dilution"
    assert a.material and a.sentiment < -0.5


def test_424b5_filing_is_offering_even_with_bland_text():
    a = rules.classify(filing("424B5", summary="Filed: 2024-05-06 AccNo: 0001234567-24-000123 "
                                               "Size: 412 KB"))
    assert a.category == "offering_dilution"
    assert a.material and a.sentiment < 0


@pytest.mark.parametrize("form", ["SC 13D", "SC 13D/A", "SC 13G", "sc 13g/a", "SCHEDULE 13D"])
def test_13d_filing_is_insider_or_activist(form):
    a = rules.classify(filing(form, summary="Filed: 2024-05-06 AccNo: 0009999999-24-000001"))
    assert a.category == "insider_or_activist"
    assert a.material and a.sentiment > 0


def test_activist_13d_counts_more_than_passive_13g_or_an_amendment():
    active, passive, amended = (rules.classify(filing(f)) for f in ("SC 13D", "SC 13G", "SC 13D/A"))
    assert active.score > passive.score
    assert active.score > amended.score


@pytest.mark.parametrize("items, category, material", [
    ("Item 1.01: Entry into a Material Definitive Agreement Item 9.01: Financial Statements "
     "and Exhibits", "contract_partnership", True),
    ("Item 2.01: Completion of Acquisition or Disposition of Assets", "merger_acquisition", True),
    ("Item 3.01: Notice of Delisting or Failure to Satisfy a Continued Listing Rule or "
     "Standard; Transfer of Listing", "delisting_notice", True),
    ("Items 2.02 and 9.01", "earnings_guidance", True),
    ("Item 5.02: Departure of Directors or Certain Officers; Election of Directors", "other",
     False),
])
def test_8k_item_numbers_name_the_catalyst(items, category, material):
    a = rules.classify(filing("8-K", summary=f"Filed: 2024-05-06 AccNo: 0001 Size: 1 MB {items}"))
    assert a.category == category
    assert a.material is material


def test_officer_change_8k_is_other_with_a_modest_score():
    a = rules.classify(filing("8-K", summary="Item 5.02: Departure of Directors or Certain "
                                             "Officers; Appointment of Certain Officers"))
    assert a.category == "other"
    assert 0.1 < a.score < rules.MATERIAL_SCORE


def test_unrelated_headline_is_other_and_not_material():
    a = rules.classify(press_release(
        "Acme Bio to Present at the Jefferies Global Healthcare Conference",
        "Acme Bio will participate in a fireside chat on Wednesday, June 5, 2024 at 9:00 a.m. ET."))
    assert a.category == "other"
    assert not a.material
    assert a.score == pytest.approx(0.1)
    assert a.keywords == []


@pytest.mark.parametrize("category, sign, title", [
    ("fda_approval", 1, "Delta Bio Granted FDA Breakthrough Therapy Designation for DB-7"),
    ("merger_acquisition", 1, "MegaCorp to Acquire Acme Bio for $14.50 Per Share in Cash"),
    ("offering_dilution", -1, "Gamma Inc. Announces $10 Million Registered Direct Offering"),
    ("earnings_guidance", 1, "Tau Inc. Reports Record Q2 Revenue, Raises Full-Year Guidance"),
    ("earnings_guidance", -1, "Rho Corp Lowers Full-Year 2024 Revenue Guidance"),
    ("contract_partnership", 1, "Upsilon Defense Awarded $45 Million U.S. Navy Contract"),
    ("contract_partnership", 1, "Chi Bio Enters into Exclusive License Agreement with Pfizer"),
    ("uplisting", 1, "Psi Technologies Approved for Listing on the Nasdaq Capital Market"),
    ("going_concern", -1, "Alpha Retail Discloses Substantial Doubt About Its Ability to "
                          "Continue as a Going Concern"),
    ("reverse_split", -1, "Beta Bio Announces 1-for-20 Reverse Stock Split"),
    ("delisting_notice", -1, "Delta Inc. Receives Nasdaq Deficiency Letter Regarding Minimum "
                             "Bid Price Requirement"),
    ("delisting_notice", 1, "Epsilon Regains Compliance with Nasdaq Minimum Bid Price Rule"),
    ("insider_or_activist", 1, "Activist Investor Starboard Value Takes 9.9% Stake in Eta Corp"),
    ("bankruptcy", -1, "Iota Retail Files for Chapter 11 Bankruptcy Protection"),
    ("buyback_dividend", 1, "Mu Inc. Board Approves $500 Million Share Buyback"),
    ("buyback_dividend", -1, "Xi Corp Suspends Quarterly Dividend"),
])
def test_typical_headlines_get_their_category_and_direction(category, sign, title):
    a = rules.classify(press_release(title))
    assert a.category == category
    assert a.material
    assert a.sentiment * sign > 0.3


def test_headline_outweighs_a_catalyst_only_mentioned_in_the_summary():
    a = rules.classify(press_release(
        "Acme Bio Announces Proposed Public Offering of Common Stock",
        "The offering follows positive topline data from the Phase 2 trial of ZYX-101."))
    assert a.category == "offering_dilution"


def test_catalyst_in_the_title_scores_higher_than_in_the_summary():
    in_title = rules.classify(press_release("Acme Corp Announces Share Repurchase Program"))
    in_summary = rules.classify(press_release(
        "Acme Corp Business Update", "Acme Corp announces share repurchase program."))
    assert in_title.category == in_summary.category == "buyback_dividend"
    assert in_title.score > in_summary.score


def test_sought_approval_counts_less_than_granted_approval():
    sought = rules.classify(press_release("Acme Bio Plans to Seek FDA Approval of ZYX-101"))
    granted = rules.classify(press_release("Acme Bio Receives FDA Approval of ZYX-101"))
    assert sought.category == granted.category == "fda_approval"
    assert sought.score < granted.score
    assert sought.sentiment < granted.sentiment


def test_a_spac_name_alone_is_not_merger_news():
    a = rules.classify(press_release("Iota Capital Acquisition Corp. to Present at ROTH "
                                     "Conference"))
    assert a.category == "other"
    assert not a.material


def test_repeating_a_phrase_does_not_inflate_the_score():
    once = rules.classify(press_release("Acme Update", "Acme priced a private placement."))
    often = rules.classify(press_release("Acme Update", "Acme priced a private placement. " * 30))
    assert once.score == often.score


def test_alert_fields_come_from_the_item():
    summary = "  Acme   Bio,\n\tInc. announced\n\n" + "a private placement of shares. " * 40
    a = rules.classify(press_release("Acme Bio Announces $20 Million Private Placement", summary,
                                     tickers=["ACME", "ACMEW", "ACME"]))
    assert a.tickers == ["ACME", "ACMEW"]
    assert a.summary.startswith("Acme Bio, Inc. announced a private placement")
    assert len(a.summary) == rules.SUMMARY_CHARS
    assert "  " not in a.summary
    assert a.material == (a.score >= rules.MATERIAL_SCORE)
    assert a.provider == "rules"


def test_summary_falls_back_to_the_title():
    a = rules.classify(press_release("  Acme   Announces  Share Buyback  ", "   \n "))
    assert a.summary == "Acme Announces Share Buyback"


def test_keywords_are_distinct_and_bounded():
    text = ("FDA approval, public offering, reverse stock split, Chapter 11, going concern, "
            "merger agreement, share buyback, uplisting, deficiency letter, activist investor, "
            "license agreement, topline results, record revenue, strong growth")
    a = rules.classify(press_release(text, text))
    assert 0 < len(a.keywords) <= rules.MAX_KEYWORDS
    assert len(set(a.keywords)) == len(a.keywords)


def test_every_category_the_schema_needs_is_offered():
    required = {"fda_approval", "clinical_results", "merger_acquisition", "offering_dilution",
                "earnings_guidance", "contract_partnership", "uplisting", "going_concern",
                "reverse_split", "delisting_notice", "insider_or_activist", "bankruptcy",
                "buyback_dividend", "other"}
    assert required <= set(rules.CATEGORIES)
    assert set(rules.CATEGORY_SIGNS) == set(rules.CATEGORIES)
    assert set(rules.CATEGORY_SIGNS.values()) <= {-1, 0, 1}


def _garbage(rng: random.Random, length: int) -> str:
    pools = ["abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
             " .,;:!?-'\"()/$%&\n\t", "İßﬁÅΩЖ中文日本語😀\u0301\u200b\x00\ufffd",
             "not no did fail fda approval offering 13d item 1.01 split "]
    return "".join(rng.choice(rng.choice(pools)) for _ in range(length))


def test_scores_and_sentiment_stay_in_range_for_arbitrary_text():
    rng = random.Random(20240603)
    texts = [_garbage(rng, rng.randint(0, 400)) for _ in range(300)]
    texts += ["", " ", "\x00" * 50, "İ" * 5000, "not " * 4000, "FDA approval " * 2000,
              "did not " * 1500 + "meet primary endpoint", "a" * 100_000,
              "public offering reverse split chapter 11 " * 500]
    for i, text in enumerate(texts):
        kind = "sec" if i % 3 == 0 else "pr"
        item = Item(key=f"k{i}", title=text[:2048], link="l", source="s", kind=kind,
                    summary=text[:16384], form=rng.choice([None, "", "8-K", "424B5", "SC 13D/A"]))
        a = valid(rules.classify(item))
        assert a.category in rules.CATEGORIES
        assert 0.0 <= a.score <= 1.0 and -1.0 <= a.sentiment <= 1.0
        assert len(a.summary) <= rules.SUMMARY_CHARS and len(a.keywords) <= rules.MAX_KEYWORDS
        assert a.material == (a.score >= rules.MATERIAL_SCORE)


def test_classify_builds_no_regex_per_call(monkeypatch):
    """Every pattern is compiled at import: a call never reaches the regex compiler."""
    def no_compiling(*args, **kwargs):
        raise AssertionError("classify compiled a regex")

    monkeypatch.setattr(re, "_compile", no_compiling)
    monkeypatch.setattr(re, "compile", no_compiling)
    a = rules.classify(press_release(
        "Acme Bio Announces FDA Approval of ZYX-101; Did Not Seek a Public Offering",
        "Item 2.02 results, record revenue, 1-for-10 reverse split, no adverse events."))
    b = rules.classify(filing("8-K/A", summary="Items 1.01, 2.03 and 9.01"))
    assert a.category and b.category
