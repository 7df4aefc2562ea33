"""Word-level tokenization as the COCO evaluation does it: a Python port of the PTB tokenizer.

`tokenize()` is a pure-Python approximation of pycocoevalcap's `PTBTokenizer`: the Stanford
CoreNLP 3.4.1 PTB lexer run with `-lowerCase`, whose tokens in pycocoevalcap's `PUNCTUATIONS`
list are then dropped. Training on the tokens the metrics count means the model learns to produce
them: "dog's" is `dog 's`, "don't" is `do n't`, "t-shirt", "5.5" and "u.s." stay whole.

The lexer is a longest-match scanner like the JFlex one it imitates: at each position every rule
is tried, the longest match wins, ties go to the earlier rule. A rule may need some context after
the token (`context`); as in JFlex that context counts for the length but is not consumed.
It covers what captions contain (words, contractions, hyphens, numbers, abbreviations, quotes,
symbols), not PTB's treatment of SGML with attributes, phone numbers or URLs with odd characters.

One deliberate difference: PTB turns brackets into `-LRB-` etc. and then lowercases them, so
pycocoevalcap's punctuation filter (which lists `-LRB-`) misses them and `-lrb-` becomes a word.
We drop brackets, as that filter intends: a model should not learn to write "-lrb-". The metrics'
Java-free path asks for pycocoevalcap's tokens (`ptb_brackets=True`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

# pycocoevalcap's PUNCTUATIONS, plus the (lowercased) bracket tokens: see the module docstring.
_PYCOCOEVALCAP_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
     "--", "...", ";"]
)  # fmt: skip
_LOWERCASED_BRACKETS = frozenset(["-lrb-", "-rrb-", "-lcb-", "-rcb-", "-lsb-", "-rsb-"])
_DROPPED_TOKENS = _PYCOCOEVALCAP_PUNCTUATION | _LOWERCASED_BRACKETS
_BRACKET_TOKENS = {
    "(": "-lrb-",
    ")": "-rrb-",
    "[": "-lsb-",
    "]": "-rsb-",
    "{": "-lcb-",
    "}": "-rcb-",
}

# Characters PTB maps to others while lexing; mapping them first keeps the rules short.
# Dashes, ellipses, fractions and currency become tokens of their own, hence the spaces.
_CHARACTER_MAP = str.maketrans(
    {
        "\u0091": "\u2018", "\u0092": "\u2019", "\u201c": '"', "\u201d": '"', "\u201e": '"',
        "\u201f": '"', "\u00ab": '"', "\u00bb": '"', "\u0093": '"', "\u0094": '"',
        "\u2013": " -- ", "\u2014": " -- ", "\u2015": " -- ", "\u0096": " -- ", "\u0097": " -- ",
        "\u2026": " ... ", "\u0085": " ... ", "\u00bd": " 1/2 ", "\u00bc": " 1/4 ",
        "\u00be": " 3/4 ", "\u00a3": " # ", "\u20ac": " $ ", "\u00a4": " $ ", "\u20a0": " $ ",
        "\u00a2": " cents ", "\u00ad": "", "\u200b": "", "\u200e": "", "\u200f": "", "\ufeff": "",
    }
)  # fmt: skip

# The building blocks of the rules below; PTBLexer's own macro names in brackets.
_LETTER = r"[^\W\d_]"  # a letter, any script
_LETTER_OR_DIGIT = r"[^\W_]"  # a letter or a digit, any script
_APOSTROPHE = "['\u2019]"
# Some rules also take left single quotes as apostrophes.
_APOSTROPHE_OR_LEFT_QUOTE = "['\u2019\u2018\u201b]"
# A word [WORD]: letters and digits, starting with a letter; "dog.the" is one token in PTB 3.4.1.
_WORD = rf"{_LETTER}(?:{_LETTER}|\d)*(?:[.!?]{_LETTER}(?:{_LETTER}|\d)*)*"
_ACRONYM = r"[A-Za-z](?:\.[A-Za-z])+"  # u.s [ACRO]
# Letters and digits joined by hyphens [HTHING]: t-shirt, 5-year-old, u.s.-made.
_HYPHENATED = rf"[A-Za-z0-9][A-Za-z0-9.,]*(?:-(?:{_ACRONYM}\.|[A-Za-z0-9]+))+"
# Letters and digits joined by hyphens or underscores, any script, each part optionally after
# d', o' or l' [THING]: o'neill, l'oreal-paris.
_ELIDED_PREFIX = rf"[dDoOlL]{_APOSTROPHE_OR_LEFT_QUOTE}{_LETTER_OR_DIGIT}"
_ALNUM_COMPOUND = (
    rf"(?:{_ELIDED_PREFIX})?{_LETTER_OR_DIGIT}+"
    rf"(?:[-_](?:{_ELIDED_PREFIX})?{_LETTER_OR_DIGIT}+)*"
)
_CAPITALS_WITH_AMPERSAND = r"[A-Z]+(?:[+&][A-Z]+)+"  # AT&T, R+D [THINGA]
_CLITIC_SUFFIX = rf"{_APOSTROPHE}(?:[msdMSD]|(?i:re|ve|ll))"  # 's 'm 'd 're 've 'll [REDAUX]
_NT_SUFFIX = rf"(?i:n){_APOSTROPHE_OR_LEFT_QUOTE}(?i:t)"  # n't [SREDAUX]

# Abbreviations that keep their period. PTB's lexer is caseless except inside character classes,
# so "Wash." is an abbreviation and "wash." is not: those entries start with a fixed capital.
_ABBREVIATIONS = "|".join(
    [  # Python takes the first alternative that matches: "a.b." before "a.", "ph.d." before "ph."
        rf"{_ACRONYM}|(?i:ed\.d|ph\.d|a\.k\.a)",
        r"(?i:jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec|mon|tues?|wed|thu|thurs|fri)",
        r"(?i:ala|ariz|calif|colo|conn|ct|dak|fla|ga|ind|kans?|ky|md|mich|minn|mo|mont|neb|nev)",
        r"(?i:okla|penn|tenn|va|vt|wisc?|wyo)|A(?i:z|rk)|D(?i:el)|I(?i:ll)|L(?i:a)|M(?i:ass|iss)",
        r"O(?i:re)|P(?i:a)|T(?i:ex)|W(?i:ash)",
        r"(?i:inc|cos?|corp|pp?tys?|ltd|plc|rt|bancorp|dept|bhd|assn|univ|intl|sys|ph|tel|est)",
        r"(?i:ext|sq|ft|jr|sr|bros|blvd|rd|esq|etc|al|seq|bldg|mrs?|ms|drs?|profs?|sens?|reps?)",
        r"(?i:attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl|pvt|mt|capt|ste?|ave|pres)",
        r"(?i:lieut|hon|brig|co?mdr|pfc|spc|supts?|det|adj|adv|asst|assoc|ens|insp|mlle|mme)",
        r"(?i:msgr|sfc|vs|alex|wm|jos|cie|cf|treas|invt|elec|natl|m[ft]g)|[A-Za-z]",
    ]
)
_BEFORE_NUMBER_ABBREVIATIONS = r"(?i:ca|figs?|prop|nos?|art|bldg|pp|op)"  # "fig. 3"

# Words with an apostrophe that stay whole: rock 'n' roll, o'clock, ma'am, '90s, y'all...
_APOSTROPHE_WORD = "|".join(
    [
        rf"{_APOSTROPHE}n{_APOSTROPHE}?|[lLdDjJ]{_APOSTROPHE}",
        rf"(?i:dunkin|somethin|ol){_APOSTROPHE}|{_APOSTROPHE}[2-9]0s",
        rf"{_APOSTROPHE}(?i:em|till?|cause)|(?i:cont'd\.?|nor'easter|c'mon|e'er|s'mores|ev'ry)",
        rf"(?i:li'l|nat'l)|[A-HJ-XZn]{_APOSTROPHE_OR_LEFT_QUOTE}{_LETTER}{{2,}}",
        rf"{_LETTER}+[aeiouyAEIOUY]{_APOSTROPHE_OR_LEFT_QUOTE}[aeiouA-Z]{_LETTER}*",
    ]
)
_URL = (
    r"https?://[^\s\"<>|()]+[^\s\"<>|.!?(){},-]"
    r"|(?:www\.(?:[^\s\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4}"
    r"|(?:[^\s\"`'<>|.!?(){},-_$]+\.)+(?i:com|net|org|edu))(?:/[^\s\"<>|()]+[^\s\"<>|.!?(){},-])?"
)
_EMAIL = r"[a-zA-Z0-9][^\s\"<>|()]*@(?:[^\s\"<>|().]+\.)*[^\s\"<>|().]+"
_SMILEY = r"[<>]?[:;=][-o*']?[()DPdpO\\{@|\[\]]"


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern
    action: str
    """`keep` the token; `drop` it; `push<n>`: keep it but rescan its last n characters
    ("cannot" -> "can" + "not"); `quote`: keep it with PTB's quote normalization (n't, 's);
    `smiley`: keep it with parentheses as -lrb- -rrb-; `bracket`: PTB's -lrb- etc.; `hyphens`:
    PTB's dashes "-" and "--" (from 1-4 hyphens) are punctuation, longer runs are kept; else the
    token's normalized form."""


def _rule(token: str, action: str = "keep", context: str = "") -> _Rule:
    return _Rule(re.compile(f"(?P<t>{token})(?:{context})"), action)


# In PTB's order: on equal lengths the earlier rule wins.
_RULES = [
    _rule(rf"(?i:cannot|{_APOSTROPHE}twas)", "push3"),
    _rule(rf"(?i:{_APOSTROPHE}tis|gonna|gotta|lemme|gimme|wanna)", "push2"),
    _rule(r"</?[A-Za-z!][^>]*>"),  # SGML tags
    _rule(r"(?i:&amp;)", "&"),
    _rule(_WORD, context=_CLITIC_SUFFIX),  # "dog" of "dog's"
    _rule(r"[A-Za-z]*[A-MO-Za-mo-z]", context=_NT_SUFFIX),  # "do" of "don't"
    _rule(_WORD),
    _rule(_APOSTROPHE_WORD),
    _rule(rf"[yY]{_APOSTROPHE}", context=_LETTER),  # y'all
    _rule(_URL),
    _rule(_EMAIL),
    _rule(rf"@[A-Za-z_]\w*|#{_LETTER}\w*(?:{_LETTER_OR_DIGIT})"),  # @name, #hashtag
    _rule(_CLITIC_SUFFIX, "quote", context="[^A-Za-z]"),
    _rule(_NT_SUFFIX, "quote", context="[^A-Za-z]"),
    _rule(r"\d{1,2}[-/]\d{1,2}[-/]\d{2,4}"),  # dates
    _rule(r"[-+]?(?:\d*(?:[.:,]\d+)+|\d+)"),  # numbers, times
    _rule(r"(?:\d{1,4}-)?\d{1,4}\\?/\d{1,4}"),  # fractions
    _rule(r"(?i:-(?:rrb|lrb|rcb|lcb|rsb|lsb)-|c\.d\.s|pro-|anti-|s&p-500|s&ls|cap'n|c'est)"),
    _rule(r"(?i:c\+\+|[cf]#)"),
    _rule(r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"),
    _rule(r"[A-Z]*\$|#"),  # currency
    _rule(rf"{_BEFORE_NUMBER_ABBREVIATIONS}\.", context=r"\s?\d"),
    _rule(rf"(?:{_ABBREVIATIONS})\."),
    _rule(rf"{_APOSTROPHE}\d\d", context=r"\s"),  # '90
    _rule(  # a word-like token with its period, before , ; or : ("etc.,")
        rf"(?:{_WORD}|{_HYPHENATED}|{_ALNUM_COMPOUND}|{_CAPITALS_WITH_AMPERSAND})\.",
        context="[,;:]",
    ),
    _rule(_SMILEY, "smiley", context="[^A-Za-z0-9]"),
    _rule('"', "drop"),
    _rule(r"[()\[\]{}]", "bracket"),
    _rule(r"<<|>>|[+%&~^|\\<>=/]"),
    _rule(r"-+", "hyphens"),
    _rule(r"\.{3,5}", "drop"),
    _rule(r"@+|#+|_+|\*+"),
    _rule(r"[?!]+|[.,;:\u00a1\u00bf]"),
    _rule(_HYPHENATED),
    _rule(_ALNUM_COMPOUND),
    _rule(_CAPITALS_WITH_AMPERSAND),
    _rule("'", "drop", context=r"[A-Za-z]\S"),  # an opening quote: 'STOP' is not 's TOP'
    _rule("''|[`\u2018\u2019\u201a\u201b]{1,2}|'", "drop"),  # quotes
    _rule(_CLITIC_SUFFIX, "quote"),
    _rule(_NT_SUFFIX, "quote"),
]
_QUOTE_NORMALIZATION = str.maketrans({"\u2018": "`", "\u201b": "`", "\u2019": "'"})
_SPLIT_WORDS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])  # "can not"...


def _is_symbol(char: str) -> bool:
    """PTB keeps most symbols (BMP only) as one-character tokens: "10°" is `10 °`."""
    return ord(char) < 0x10000 and (
        unicodedata.category(char).startswith("S") or char in "\u00a7\u00b6\u00b7\u2022"
    )


def _longest_match(text: str, pos: int) -> tuple[_Rule, str] | None:
    best, best_end = None, pos
    for rule in _RULES:
        m = rule.pattern.match(text, pos)
        if m and m.end() > best_end:
            best, best_end = (rule, m.group("t")), m.end()
    return best


@lru_cache(maxsize=1 << 17)
def _lex_chunk(chunk: str, follow: str, brackets: bool = False) -> tuple[str, ...]:
    """Tokens of one whitespace-free chunk. `follow` stands for what comes after it: " 0" before
    a chunk starting with a digit (the only look past the space a rule makes), else " "."""
    text, pos, tokens = chunk + follow, 0, []
    while pos < len(chunk):
        found = _longest_match(text, pos)
        if found is None:  # PTB keeps symbols and deletes other unknown characters
            if _is_symbol(chunk[pos]):
                tokens.append(chunk[pos])
            pos += 1
            continue
        rule, token = found
        if rule.action.startswith("push"):
            token = token[: -int(rule.action[4:])]
        pos += len(token)
        if rule.action == "keep" or rule.action.startswith("push"):
            tokens.append(token.lower())
        elif rule.action == "quote":
            tokens.append(token.translate(_QUOTE_NORMALIZATION).lower())
        elif rule.action == "smiley":
            tokens.append(token.lower().replace("(", "-lrb-").replace(")", "-rrb-"))
        elif rule.action == "bracket":
            tokens.append(_BRACKET_TOKENS[token])
        elif rule.action == "hyphens":
            tokens += [token] if len(token) >= 5 else []
        elif rule.action != "drop":
            tokens.append(rule.action)
    dropped = _PYCOCOEVALCAP_PUNCTUATION if brackets else _DROPPED_TOKENS
    return tuple(t for t in tokens if t not in dropped)


def tokenize(text: str, ptb_brackets: bool = False) -> list[str]:
    """Lowercased PTB tokens without punctuation, as pycocoevalcap's tokenizer gives them;
    brackets are dropped unless `ptb_brackets` (then "(" is `-lrb-`, as in pycocoevalcap).

    >>> tokenize("A dog's ball, RED!  (Don't t-shirts cost $5.50?)")
    ['a', 'dog', "'s", 'ball', 'red', 'do', "n't", 't-shirts', 'cost', '$', '5.50']
    """
    chunks = text.translate(_CHARACTER_MAP).split()
    tokens: list[str] = []
    for i, chunk in enumerate(chunks):
        if chunk.isalpha() and chunk.lower() not in _SPLIT_WORDS:
            tokens.append(chunk.lower())  # the common case, and what the rules would give
        else:
            digit_next = i + 1 < len(chunks) and chunks[i + 1][0].isdecimal()
            tokens += _lex_chunk(chunk, " 0" if digit_next else " ", ptb_brackets)
    return tokens


_SPACED_CLITIC = re.compile(r" ('s|'re|'ve|'ll|'m|'d|n't)(?=\s|$)")


def detokenize(text: str) -> str:
    """Readable text from PTB tokens, for people: `a dog 's ball` -> `a dog's ball`. The metrics
    tokenize both forms the same way."""
    return _SPACED_CLITIC.sub(r"\1", text)
