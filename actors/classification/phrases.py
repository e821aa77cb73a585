"""The keyword classifier's tables: category signs, weighted phrases, tone words,
SEC form types and 8-K items. Tuning the classifier means editing this file."""

from __future__ import annotations

import re

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
