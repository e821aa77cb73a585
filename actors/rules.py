"""The offline keyword classifier: the default LLM provider, and the one the demo uses.

Each category has weighted phrases (regexes) and a sign. Speed comes from indexing the
phrases by their first three characters: one precompiled scan finds the few places where
some phrase could start, and only the phrases that open that way are tried there.
"""

from __future__ import annotations

import math
import re
from re import _constants as _sre, _parser as _sre_parse  # see _build
from typing import NamedTuple

from actors.protocol import Analysis, Item

# Which way each category moves a stock by default: +1, -1, or 0 where the phrase decides
# (a trial that met or missed its endpoint, guidance raised or cut).
CATEGORY_SIGNS: dict[str, int] = {
    "fda_approval": 1, "clinical_results": 0, "merger_acquisition": 1,
    "offering_dilution": -1, "earnings_guidance": 0, "contract_partnership": 1,
    "uplisting": 1, "going_concern": -1, "reverse_split": -1, "delisting_notice": -1,
    "insider_or_activist": 1, "bankruptcy": -1, "buyback_dividend": 1, "other": 0,
}
# The Gemini provider's response schema enumerates these; keep the names stable.
CATEGORIES: tuple[str, ...] = tuple(CATEGORY_SIGNS)

TITLE_WEIGHT = 2.0  # a headline states the catalyst; a summary often only mentions it
SCAN_CHARS = 1200  # the lede carries the catalyst; boilerplate below it only adds noise
SUMMARY_CHARS = 300
MAX_KEYWORDS = 10
MATERIAL_SCORE = 0.5
NO_MATCH_SCORE = 0.1
OTHER_MAX_SCORE = 0.4  # "other" is never material on keywords alone
SCORE_SCALE = 4.0  # evidence at which the score is ~2/3 of the way from 0.1 to 1
SENTIMENT_SCALE = 4.0
_MAX_KEYWORD_CHARS = 64
_LOOKBEHIND = 48  # how far before a phrase a negation or hedge still applies

_OTHER = CATEGORIES.index("other")
_TONE = -1  # a tone word: moves sentiment, is evidence for no category
_ABSORB = -2  # a phrase matched only so that its words do not count (SPAC names)


def _any(*alternatives: str) -> tuple[str, ...]:
    """One phrase written several ways; each way is indexed by its own openings."""
    return alternatives


_GUIDANCE = (r"(?:full[- ]year |fiscal(?: year)?(?: 20\d\d)? |annual |20\d\d |fy ?\d\d )*"
             r"(?:financial |revenue |sales |earnings |eps )?(?:guidance|outlook|forecast)")
_ESTIMATES = r"(?:analyst |analysts' |consensus |wall street )?(?:estimates|expectations)"
_EXCHANGE = r"(?:the )?(?:nasdaq|nyse|new york stock exchange)"
_ENDPOINT = (r"(?:its |the |both |all |any )?(?:co-)?primary (?:and secondary )?"
             r"(?:efficacy )?endpoints?")
_OFFICER = r"(?:insider|director|officer|ceo|cfo|chairman|chairwoman|president|founder)s?"
_DIVIDEND = r"(?:its |the )?(?:quarterly |annual |monthly )?(?:cash )?dividends?"

# category -> [(pattern, weight) or (pattern, weight, polarity)], lower case; polarity
# defaults to the category's sign. Where two phrases can start at the same place the
# first listed wins, so "did not meet ... endpoint" comes before "primary endpoint".
_PATTERNS: dict[str, list[tuple]] = {
    "fda_approval": [
        (_any(r"complete response letters?", "crl", "clinical hold", r"refus(?:e|al) to file",
              "not approvable", r"(?:fda|agency) (?:declin|reject)(?:es|ed)"), 4.0, -1),
        (r"(?:fda )?warning letter", 2.0, -1),
        (_any(r"(?:u\.s\. )?fda[- ](?:approv(?:al|es|ed)|grants? (?:\w+ )?approval)",
              r"(?:u\.s\. )?food and drug administration (?:\(fda\) )?(?:has )?approv(?:al|es|ed)",
              r"approv(?:al|ed) (?:by|from) the (?:u\.s\. )?(?:fda|food and drug administration)"),
         4.5),
        (_any(r"(?:510\(k\)|de novo) (?:clearance|authori[sz]ation)", r"fda[- ]clear(?:ance|ed|s)",
              r"(?:marketing|emergency use) authori[sz]ation",
              r"(?:chmp|ema) (?:positive opinion|recommend\w*)"), 3.5),
        (r"(?:accelerated|full|conditional|supplemental) approval", 3.0),
        (_any(r"(?:breakthrough therapy|breakthrough device|fast track|orphan drug|rare pediatric"
              r" disease|priority review|rmat) designation", r"positive (?:chmp )?opinion",
              r"(?:fda )?accept(?:s|ed|ance of) (?:the |its |our )?(?:s?nda|s?bla|maa|pma)"), 2.5),
        (_any("priority review", r"ce mark(?:ing)?"), 2.0),
        (r"submi(?:ts|tted|ssion of) (?:an? |its |the )?(?:s?nda|s?bla|maa|pma|new drug"
         r" application|biologics license application)", 2.5, 0.5),
        (_any(r"(?:new drug|biologics license|premarket approval) application",
              r"(?:s?nda|s?bla|maa) (?:submission|filing)", r"pdufa(?: target action)?(?: date)?"),
         1.5, 0),
    ],
    "clinical_results": [
        (r"(?:did ?n[o']t|does ?n[o']t|fail(?:s|ed) to|not) (?:meet|achieve|reach)\w* " + _ENDPOINT,
         4.5, -1),
        (r"miss(?:es|ed)? " + _ENDPOINT, 4.5, -1),
        (r"(?:met|meets|achieved|achieves|hit|hits) " + _ENDPOINT, 4.5, 1),
        (r"(?:positive|encouraging|favorable) (?:top[- ]?line |interim |clinical |final )?"
         r"(?:data|results)", 3.0, 1),
        (r"top[- ]?line (?:data|results|readout)", 3.0), (_ENDPOINT, 2.0),
        (_any(r"phase (?:[1-3]|i{1,3})[ab]?(?:/(?:[1-3]|i{1,3})[ab]?)? (?:clinical )?"
              r"(?:trials?|stud(?:y|ies)|data|results|readout)", r"pivotal (?:trial|study|data)",
              r"clinical (?:trial |study )?(?:data|results)"), 2.5),
        (_any(r"interim (?:analysis|data|results)", "data readout",
              r"(?:overall|progression-free|event-free|disease-free) survival",
              r"(?:objective|overall|complete) response rates?"), 2.0),
        (_any("futility", r"(?:discontinu|halt|terminat)(?:es|ed|ing|e|s)? (?:the |its )?"
              r"(?:clinical )?(?:development|trial|study|program)"), 3.0, -1),
        (_any(r"serious adverse events?", r"safety signals?", r"patient deaths?",
              r"dose-limiting toxicit(?:y|ies)"), 2.0, -1),
        (r"statistical(?:ly)? significan(?:t|ce)", 2.0, 1), (r"well[- ]tolerated", 1.5, 1),
    ],
    "merger_acquisition": [
        (r"terminat(?:es|ed|ion of) (?:the |its )?(?:merger|acquisition)(?: agreement)?", 3.5, -1),
        (_any(r"(?:definitive|binding) (?:merger )?agreement (?:to|under which) (?:\w+ ){0,3}"
              r"(?:acquire|be acquired|merge|combine)", "to be acquired"), 4.5),
        ("merger agreement", 4.0),
        (_any(r"(?:to|will) acquire", "per share in cash",
              r"(?:complet|clos|announc)(?:es|ed|ing) (?:the |its )?(?:acquisition|merger)"), 3.5),
        (_any(r"letter of intent to (?:acquire|merge)", r"merge(?:s|d)? with",
              r"all[- ](?:cash|stock) (?:transaction|deal|offer)",
              r"(?:unsolicited|non-binding) (?:proposal|offer|bid)",
              r"(?:take|go|going|taking)[- ]private", "business combination", "tender offer",
              "reverse merger", "buyout"), 3.0),
        ("acquisition of", 2.5), (_any("merger", "acquisition", r"acquir(?:es|ed|ing)"), 2.0),
        ("strategic alternatives", 1.5, 0),
    ],
    "offering_dilution": [
        (r"(?:proposed |upsized |underwritten |firm commitment |best[- ]efforts |overnight )*"
         r"(?:public|registered direct|follow-on|secondary|bought deal|unit|equity|common"
         r" stock|at[- ]the[- ]market|confidentially marketed public) offerings?", 4.5),
        (r"(?:atm|at[- ]the[- ]market) (?:program|facility|equity|sales agreement)", 4.0),
        (_any(r"offering of (?:\$|[\d,.]+ (?:million )?(?:shares|units)|common|units|ordinary)",
              "private placement", r"pipe (?:financing|investment|offering)"), 3.5),
        (_any("shelf registration", r"registration statement on form [sf]-[13]",
              r"equity (?:line|purchase agreement)", "securities purchase agreement",
              r"warrant (?:inducement|exercise)"), 3.0),
        (r"convertible (?:senior )?(?:notes?|debentures?|preferred)", 2.5),
        (_any(r"(?:pre-funded )?warrants to purchase", "over-allotment", "gross proceeds",
              r"dilut(?:ion|ive)"), 2.0),
    ],
    "earnings_guidance": [
        (r"(?:rais|increas|boost|lift)(?:es|ed|ing) (?:its |the )?" + _GUIDANCE, 4.5, 1),
        (r"(?:lower(?:s|ed)?|cuts?|reduc(?:es|ed)|withdr[ae]ws?|slash(?:es|ed)?|suspends?)"
         r" (?:its |the )?" + _GUIDANCE, 4.5, -1),
        (r"(?:beats?|tops?|exceed(?:s|ed)?|surpass(?:es|ed)?) " + _ESTIMATES, 3.0, 1),
        (_any(r"(?:miss(?:es|ed)?|falls short of) " + _ESTIMATES, "profit warning"), 3.0, -1),
        (r"(?:(?:first|second|third|fourth|1st|2nd|3rd|4th)[- ]quarter|q[1-4]) (?:(?:fiscal )?"
         r"(?:year )?(?:20\d\d|fy ?\d\d) )?(?:financial |operating )?(?:results|earnings|revenue)",
         3.5),
        (_any(r"(?:full[- ]year|fiscal(?: year)?(?: 20\d\d)?|annual|year[- ]end) (?:20\d\d )?"
              r"(?:financial )?(?:results|earnings)",
              r"preliminary (?:unaudited )?(?:financial )?(?:revenue|results)",
              r"(?:reaffirm|reiterat|maintain|confirm|initiat|provid|issu)(?:es|s|ed)? "
              r"(?:its |the )?" + _GUIDANCE), 3.0),
        (r"earnings (?:call|release|per share|report)", 2.0),
        (_any("earnings", "guidance", "eps"), 1.5), (r"(?:net )?revenues?", 1.0),
    ],
    "contract_partnership": [
        (r"terminat(?:es|ed|ion of) (?:the |its |a )?(?:\w+ )?(?:agreement|contract|"
         r"partnership|collaboration)", 3.0, -1),
        (r"(?:awarded|wins|won|secures|secured|receives|received|lands|books) (?:an? |the )?"
         r"(?:\$[\d.,]+ ?(?:million|billion|[mb]) )?(?:[\w.-]+ ){0,3}(?:contract|order|"
         r"task order|purchase order|award)s?", 4.0),
        (_any(r"(?:contract|task order|purchase order)s? (?:award|valued|worth)",
              r"(?:supply|license|licensing|collaboration|distribution|master services|commercial"
              r"|partnership|co-development|co-promotion|offtake|reseller|teaming|joint"
              r" development|strategic|framework) agreements?",
              r"(?:partners|teams|collaborates) with", "joint venture",
              r"strategic (?:partnership|collaboration|alliance)"), 3.0),
        (_any("partnership", "collaboration", "alliance", "memorandum of understanding", "mou",
              r"(?:selected|chosen) by"), 2.0),
        (r"(?:upfront|milestone) payments?", 2.5), (r"(?:contract|purchase order)s?", 1.5),
        (r"royalt(?:y|ies)", 1.0),
    ],
    "uplisting": [
        (r"uplist(?:s|ed|ing)?", 4.5), (r"approv(?:ed|al) (?:for|to) list(?:ing)?", 4.0),
        (_any(r"(?:begin|commence|start)s? trading on " + _EXCHANGE,
              r"transfer(?:s|ring)? (?:its |of )?(?:stock |share )?listing to " + _EXCHANGE,
              r"(?:nasdaq|nyse) (?:listing )?approval"), 3.5),
    ],
    "going_concern": [
        (_any("going concern", "substantial doubt"), 4.5),
        (_any(r"insufficient (?:cash|funds|capital|liquidity)", "forbearance agreement",
              "event of default", r"default(?:s|ed)? on"), 2.5),
    ],
    "reverse_split": [
        (r"reverse (?:stock |share )?split", 5.0), ("share consolidation", 3.5),
        (r"(?:1|one)[- ]for[- ](?:\d{1,4}|two|three|four|five|six|seven|eight|nine|ten|"
         r"twelve|fifteen|twenty|twenty-five|thirty|forty|fifty|(?:one )?hundred)", 3.0),
    ],
    "delisting_notice": [
        (_any(r"notice of (?:non-?compliance|deficiency|delisting)",
              r"deficiency (?:letter|notice|notification)",
              r"(?:nasdaq|nyse)(?: american)? (?:staff )?(?:notification|notice) letter"), 4.5),
        (r"delist(?:ing|ed|s)?", 3.5), (r"regain(?:s|ed)? compliance", 6.0, 1),
        (_any("minimum bid price", r"listing rule \d{4}(?:\([a-z0-9]+\))*", "form 25",
              r"(?:continued|initial) listing (?:requirements?|standards?|rules?|criteria)"), 3.0),
        (_any(r"(?:nasdaq|nyse) (?:hearings? )?panel", r"non-?compliance", "not in compliance",
              r"suspen(?:sion|ded) (?:of|from) trading"), 2.5),
    ],
    "insider_or_activist": [
        (r"(?:schedule|sc) 13[dg](?:/a)?", 4.0), ("13d", 3.0), ("13g", 2.5),
        (_OFFICER + r" (?:sell|sells|sold|selling)", 3.0, -1),
        (_any(_OFFICER + r" (?:buy|buys|bought|purchases?|purchased|acquires?|acquired)",
              r"insider (?:buying|purchases?)", r"proxy (?:fight|contest|battle)"), 3.5),
        (_any(r"activist(?: investor| shareholder| stake)?",
              r"(?:takes?|took|builds?|disclos(?:es|ed)|increas(?:es|ed)|acquires?) (?:an? )?"
              r"(?:\d+(?:\.\d+)?% )?(?:ownership )?stake"), 3.0),
        (_any(r"(?:ownership |equity )?stake in", r"letter to (?:the )?board"), 2.5),
        (r"beneficial owner(?:ship)?", 2.0), ("form 4", 1.5),
    ],
    "bankruptcy": [
        (r"emerg(?:es|ed|ence|ing) from (?:chapter 11|bankruptcy)", 4.0, 1),
        (r"chapter (?:11|7|15)", 5.0),
        (_any(r"bankrupt(?:cy|cies)?", "restructuring support agreement", "dip financing",
              r"debtor[- ]in[- ]possession"), 4.0),
        (_any(r"insolven(?:cy|t)", "receivership", "ccaa"), 3.5),
        (_any(r"plan of (?:complete )?liquidation", "dissolution",
              r"(?:wind(?:s|ing)? down|ceas(?:e|es|ed|ing)) (?:all |its |of )?"
              r"(?:operations|business)"), 3.0),
    ],
    "buyback_dividend": [
        (r"(?:suspend|cut|eliminat|reduc|halt)(?:s|es|ed|ing)? " + _DIVIDEND, 4.0, -1),
        (_any(r"(?:rais|increas|boost)(?:es|ed|ing) " + _DIVIDEND, r"buy-?backs?",
              r"(?:share|stock) (?:re)?purchase (?:program|plan|authori[sz]ation)"), 4.0),
        (_any(r"repurchase (?:of )?up to", r"(?:special|quarterly|annual|monthly|semi-annual"
              r"|increased|cash) (?:cash )?dividends?"), 3.5),
        (_any(r"(?:[2-9]|10|two|three|four|five)[- ]for[- ](?:1|one|2|two) (?:forward )?"
              r"(?:stock )?split", r"forward (?:stock )?split"), 3.0),
        ("record date", 1.5, 0), (r"dividends?", 2.0),
    ],
    "other": [
        # A date for results is not results: this phrase covers the results words after it.
        (r"(?:to|will) (?:report|release|announce|host) (?:its )?(?:[\w-]+ ){0,5}"
         r"(?:results|earnings)", 2.0),
        ("initial public offering", 2.0), ("trading halt", 2.0, -1),
        (_any("appoints", "names", "appointment of", "resignation of", "resigns", "steps down",
              "departure of"), 1.5),
    ],
}

# Words that colour a text whatever its category: (pattern, sign), weight 1 each. Each
# pattern counts once a field, so a gushing release cannot pile up tone.
_TONE_WORDS: list[tuple[str, int]] = [
    (r"(?:(?<!of )record(?! date)|strong(?:er)?|robust|breakthrough|positive|successful(?:ly)?"
     r"|favorable|surg(?:e|es|ed)|soar(?:s|ed)?|outperform\w*|upgrade[sd]?)", 1),
    (r"(?:beats?|exceed(?:s|ed)?|growth|grow(?:s|ing)|expan(?:ds?|ded|sion)|improv(?:es|ed|ement)"
     r"|profitab\w+)", 1),
    (r"(?:loss(?:es)?|declin(?:e|es|ed|ing)|decreas(?:e|es|ed)|drop(?:s|ped)?|plung\w*|miss(?:es"
     r"|ed)?|weak(?:er|ness)?|disappoint\w*|downgrade[sd]?|adverse|impairment)", -1),
    (r"(?:lawsuit|class action|investigation|subpoena|fraud|restatement|short seller|recall(?:s"
     r"|ed)?|halt(?:s|ed)?|suspend(?:s|ed)?|delay(?:s|ed)?|layoffs?|warning)", -1),
]

# Names, not news: SPACs are called "... Acquisition Corp"; matching those first keeps
# their words from counting.
_ABSORBED = [r"(?:acquisition|merger|growth|opportunity|capital) corp(?:oration|\.)?"]

# A negation shortly before a phrase, in the same clause, turns good news bad
# ("did not achieve statistical significance") and bad news neutral ("no adverse events").
_NEGATED = re.compile(
    r"(?<!\w)(?:not|no|never|without|neither|nor|fail(?:s|ed)?(?: to)?|unable to|did ?n[o']t"
    r"|does ?n[o']t|has ?n[o']t|lack of|absence of)(?!\w)[^.;:!?]{0,24}$")
# Good news only sought or expected is worth half ("submits NDA seeking FDA approval").
_HEDGED = re.compile(
    r"(?<!\w)(?:seek(?:s|ing)?|submit(?:s|ted)?|plans? to|expects?|expected|anticipate[sd]?"
    r"|potential|possible|pending|path to|towards?|if|would|could|might|pursu(?:e|es|ing)"
    r"|application for|intends? to)(?!\w)[^.;:!?]{0,30}$")

# SEC form type (upper case, no "/A"; "_" for a space) -> (category, weight, polarity).
_FORMS = {form.replace("_", " "): (CATEGORIES.index(c), w, p) for forms, c, w, p in [
    ("424B1 424B2 424B4 424B5 424B7 424B8 S-1MEF", "offering_dilution", 5.0, -1),
    ("424B3 FWP S-1 F-1", "offering_dilution", 4.0, -1),  # 424B3: mostly resales
    ("S-3 S-3ASR F-3", "offering_dilution", 3.0, -1),  # a shelf: dilution not yet priced
    ("SC_13D SCHEDULE_13D", "insider_or_activist", 5.0, 1),
    ("SC_13G SCHEDULE_13G", "insider_or_activist", 3.5, 0.5),  # passive holders
    ("4", "insider_or_activist", 2.0, 0),
    ("SC_TO-T SC_14D9 SC_13E3 DEFM14A PREM14A", "merger_acquisition", 4.0, 1),
    ("S-4 425", "merger_acquisition", 3.0, 1),
    ("25 25-NSE", "delisting_notice", 4.5, -1), ("15-12B 15-12G", "delisting_notice", 3.0, -1),
    ("10-Q 10-K", "earnings_guidance", 2.0, 0),
    ("NT_10-K NT_10-Q", "other", 2.0, -1),  # a late filing: a warning, rarely news itself
] for form in forms.split()}
_AMENDMENT_FACTOR = 0.8  # an amendment repeats news already out

# 8-K item number -> (category, weight, polarity): the item says what the filing is about.
_8K_ITEMS = {number: (CATEGORIES.index(c), w, p) for number, c, w, p in [
    ("1.01", "contract_partnership", 3.0, 1), ("1.02", "contract_partnership", 2.5, -1),
    ("1.03", "bankruptcy", 5.0, -1), ("2.01", "merger_acquisition", 3.5, 1),
    ("2.02", "earnings_guidance", 3.5, 0), ("2.03", "offering_dilution", 2.0, -1),
    ("2.04", "going_concern", 2.5, -1), ("2.05", "other", 1.5, -1), ("2.06", "other", 1.5, -1),
    ("3.01", "delisting_notice", 4.5, -1), ("3.02", "offering_dilution", 3.5, -1),
    ("3.03", "reverse_split", 1.5, -1), ("4.02", "other", 2.0, -1),
    ("5.01", "merger_acquisition", 3.0, 1), ("5.02", "other", 2.0, 0),
    ("5.03", "reverse_split", 1.0, -1), ("7.01", "other", 1.0, 0), ("8.01", "other", 1.0, 0),
]}
_ITEM_LIST = re.compile(r"(?<!\w)items?\s*(\d{1,2}\.\d{2}(?:\s*(?:,|;|&|and)\s*(?:and\s+)?"
                        r"\d{1,2}\.\d{2})*)")
_ITEM_NUMBER = re.compile(r"\d{1,2}\.\d{2}")


class _Rule(NamedTuple):
    """One phrase: what a match is evidence for, and which way it leans."""

    number: int  # tells apart rules with equal weights, for per-field deduplication
    category: int  # index into CATEGORIES, or _TONE / _ABSORB
    weight: float
    polarity: float


_HEAD = 3  # phrases are indexed by this many opening characters


def _openings(ops, k: int) -> set[str]:
    """Every way the first k characters of a parsed pattern can read (fewer where it ends)."""
    heads = {""}
    for op, arg in ops:
        grown = {h for h in heads if len(h) >= k}
        for h in heads - grown:
            grown.update(h + tail for tail in _op_openings(op, arg, k - len(h)))
        heads = grown
    return heads


def _op_openings(op, arg, k: int) -> set[str]:
    """The openings of one parsed regex element; raises for what cannot be enumerated."""
    if op is _sre.LITERAL:
        return {chr(arg)}
    if op is _sre.IN:
        chars: set[str] = set()
        for kind, value in arg:
            if kind is _sre.LITERAL:
                chars.add(chr(value))
            elif kind is _sre.RANGE:
                chars.update(map(chr, range(value[0], value[1] + 1)))
            elif kind is _sre.CATEGORY and value is _sre.CATEGORY_DIGIT:
                chars.update("0123456789")
            else:
                raise ValueError(f"rules pattern opens with an open-ended class: {arg}")
        return chars
    if op is _sre.BRANCH:
        return set().union(*(_openings(alt, k) for alt in arg[1]))
    if op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT):
        low, high, body = arg
        found: set[str] = set()
        partial = {""}
        for count in range(min(high, k) + 1):  # each repetition reads at least one character
            found.update(p for p in partial if count >= low or len(p) >= k)
            partial = {p + t for p in partial if len(p) < k for t in _openings(body, k - len(p))}
        return found
    if op in (_sre.ASSERT, _sre.ASSERT_NOT, _sre.AT):
        return {""}  # reads nothing; the whole pattern checks it after the scan
    raise ValueError(f"rules pattern opens with {op}, which cannot be indexed")


def _trie_regex(words: set[str]) -> str:
    """A regex for any of the words, nested by character so the regex engine rejects fast."""
    trie: dict = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})

    def emit(node: dict) -> str:
        alts = [re.escape(char) + emit(child) for char, child in sorted(node.items())]
        return "" if not alts else alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"

    return emit(trie)


def _build():
    """Compiles the phrase index: a scanner for openings, and per opening its phrases.

    The stdlib's own regex parser (re._parser) reads each phrase's openings, so the index
    cannot drift from the patterns; a Python that changes the parser fails here, at import.
    """
    specs = [(p, _ABSORB, 0.0, 0.0) for p in _ABSORBED]
    for name, entries in _PATTERNS.items():
        for pattern, weight, *lean in entries:
            specs.append((pattern, CATEGORIES.index(name), weight,
                          lean[0] if lean else CATEGORY_SIGNS[name]))
    specs += [(p, _TONE, 1.0, sign) for p, sign in _TONE_WORDS]
    by_head: dict[str, list[tuple[str, _Rule]]] = {}
    for number, (ways, category, weight, sign) in enumerate(specs):
        rule = _Rule(number, category, float(weight), float(sign))
        for way in (ways,) if isinstance(ways, str) else ways:
            parsed = _sre_parse.parse(way)
            if way != way.lower() or parsed.state.groups > 1:
                raise ValueError(f"rules pattern must be lower case, without groups: {way}")
            for head in _openings(parsed, _HEAD):
                if len(head) < _HEAD:
                    raise ValueError(f"rules pattern can match under {_HEAD} chars: {way}")
                by_head.setdefault(head, []).append((way, rule))
    # Per opening, one regex whose group number (m.lastindex) names the rule that matched;
    # openings with the same phrases share it, which halves the work at import.
    shared: dict[tuple[str, ...], re.Pattern[str]] = {}
    index = {}
    for head, entries in by_head.items():
        ways = tuple(way for way, _ in entries)
        if ways not in shared:
            shared[ways] = re.compile("(?:" + "|".join(f"({w})" for w in ways) + r")(?!\w)")
        index[head] = (shared[ways], tuple(rule for _, rule in entries))
    return re.compile(r"(?<!\w)" + _trie_regex(set(index))), index


_SCANNER, _INDEX = _build()


def classify(item: Item) -> Analysis:
    """Classifies one item by weighted phrase evidence; never raises on odd text."""
    evidence = [0.0] * len(CATEGORIES)  # unsigned: how sure we are of each category
    lean = [0.0] * len(CATEGORIES)  # signed: which way that evidence points
    found: list[tuple[int, str]] = []
    is_sec = item.kind == "sec"
    # Phrases are lower case; so is the text, which lets the scanner compare plain chars.
    title, lede = item.title[:SCAN_CHARS].lower(), item.summary[:SCAN_CHARS].lower()
    tone = _scan(title, 1.0 if is_sec else TITLE_WEIGHT, evidence, lean, found)
    tone += _scan(lede, 1.0, evidence, lean, found)
    if is_sec:
        _add_filing_evidence(item.form, (title, lede), evidence, lean, found)

    best = max(range(len(CATEGORIES)), key=lambda i: evidence[i] if i != _OTHER else 0.0)
    if evidence[best] <= 0.0:
        best = _OTHER
    score = _score(evidence[best], best)
    raw = lean[best] + 0.5 * (sum(lean) - lean[best]) + tone  # other categories count half
    sentiment = round(math.tanh(raw / SENTIMENT_SCALE), 3) + 0.0  # + 0.0: no "-0.0"
    return Analysis(
        category=CATEGORIES[best],
        score=score,
        sentiment=max(-1.0, min(1.0, sentiment)),
        tickers=list(dict.fromkeys(item.tickers)),
        summary=_clip_summary(item),
        keywords=_keywords(found, best),
        material=score >= MATERIAL_SCORE,
        provider="rules",
    )


def _scan(text: str, factor: float, evidence: list[float], lean: list[float],
          found: list[tuple[int, str]]) -> float:
    """Adds the evidence of one lower-cased field; returns its tone."""
    tone = 0.0
    seen: set[int] = set()  # a phrase repeated in one field is not more evidence
    covered = 0  # the words of a phrase do not also start another
    for opening in _SCANNER.finditer(text):
        start = opening.start()
        if start < covered:
            continue
        pattern, rules = _INDEX[opening.group()]
        match = pattern.match(text, start)
        if match is None:
            continue
        covered = match.end()
        rule = rules[match.lastindex - 1]
        if rule.category == _ABSORB or rule.number in seen:
            continue
        seen.add(rule.number)
        weight, polarity = rule.weight * factor, rule.polarity
        if polarity:
            weight, polarity = _qualify(text, start, weight, polarity)
        if rule.category == _TONE:
            tone += polarity * factor
        else:
            evidence[rule.category] += weight
            lean[rule.category] += weight * polarity
        found.append((rule.category, match.group()))
    return tone


def _qualify(text: str, start: int, weight: float, polarity: float) -> tuple[float, float]:
    """Adjusts a leaning phrase for a negation or hedge just before it."""
    window = max(0, start - _LOOKBEHIND)
    if _NEGATED.search(text, window, start):
        # "did not win approval" is still strong evidence of the category, pointing down;
        # "no going concern doubt" is weak evidence with no lean.
        return (weight, -1.0) if polarity > 0 else (weight * 0.5, 0.0)
    if polarity > 0 and _HEDGED.search(text, window, start):
        return weight * 0.5, polarity * 0.5
    return weight, polarity


def _add_filing_evidence(form: str | None, texts: tuple[str, str], evidence: list[float],
                         lean: list[float], found: list[tuple[int, str]]) -> None:
    """Adds what an SEC filing's form type and 8-K item numbers say."""
    form = " ".join((form or "").upper().split())
    base = form[:-2] if form.endswith("/A") else form
    signals = []
    if base in _FORMS:
        category, weight, polarity = _FORMS[base]
        signals.append((category, weight * (_AMENDMENT_FACTOR if base != form else 1.0),
                        polarity, f"form {form.lower()}"))
    numbers = {n for text in texts for listed in _ITEM_LIST.finditer(text)
               for n in _ITEM_NUMBER.findall(listed.group(1))}
    signals += [(*_8K_ITEMS[n], f"item {n}") for n in sorted(numbers & _8K_ITEMS.keys())]
    for category, weight, polarity, phrase in signals:
        evidence[category] += weight
        lean[category] += weight * polarity
        found.append((category, phrase))


def _score(strength: float, category: int) -> float:
    """Maps evidence to 0.1..1 with diminishing returns; "other" stays below material."""
    if strength <= 0.0:
        return NO_MATCH_SCORE
    score = NO_MATCH_SCORE + (1.0 - NO_MATCH_SCORE) * (1.0 - math.exp(-strength / SCORE_SCALE))
    if category == _OTHER:
        score = min(score, OTHER_MAX_SCORE)
    return round(min(1.0, score), 3)


def _keywords(found: list[tuple[int, str]], best: int) -> list[str]:
    """The matched phrases, the winning category's first, deduplicated and bounded."""
    unique: dict[str, None] = {}
    for phrase in [p for c, p in found if c == best] + [p for c, p in found if c != best]:
        unique.setdefault(" ".join(phrase.split())[:_MAX_KEYWORD_CHARS], None)
        if len(unique) == MAX_KEYWORDS:
            break
    return list(unique)


def _clip_summary(item: Item) -> str:
    """The summary (or the title) with whitespace runs collapsed, at most SUMMARY_CHARS."""
    # Collapsing only a prefix keeps a 16 KB summary cheap.
    clipped = " ".join(item.summary[: SUMMARY_CHARS * 8].split())
    return (clipped or " ".join(item.title[: SUMMARY_CHARS * 8].split()))[:SUMMARY_CHARS]
