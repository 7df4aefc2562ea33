"""Word-level tokenization as the COCO evaluation does it, and the word vocabulary.

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
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

# pycocoevalcap's PUNCTUATIONS, plus the (lowercased) bracket tokens: see the module docstring.
_PTB_DROPPED = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
     "--", "...", ";"]
)  # fmt: skip
_DROPPED = _PTB_DROPPED | {"-lrb-", "-rrb-", "-lcb-", "-rcb-", "-lsb-", "-rsb-"}
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}

# Characters PTB maps to others while lexing; mapping them first keeps the rules short.
# Dashes, ellipses, fractions and currency become tokens of their own, hence the spaces.
_TRANSLATE = str.maketrans(
    {
        "\u0091": "\u2018", "\u0092": "\u2019", "\u201c": '"', "\u201d": '"', "\u201e": '"',
        "\u201f": '"', "\u00ab": '"', "\u00bb": '"', "\u0093": '"', "\u0094": '"',
        "\u2013": " -- ", "\u2014": " -- ", "\u2015": " -- ", "\u0096": " -- ", "\u0097": " -- ",
        "\u2026": " ... ", "\u0085": " ... ", "\u00bd": " 1/2 ", "\u00bc": " 1/4 ",
        "\u00be": " 3/4 ", "\u00a3": " # ", "\u20ac": " $ ", "\u00a4": " $ ", "\u20a0": " $ ",
        "\u00a2": " cents ", "\u00ad": "", "\u200b": "", "\u200e": "", "\u200f": "", "\ufeff": "",
    }
)  # fmt: skip

_L = r"[^\W\d_]"  # a letter, any script
_AN = r"[^\W_]"  # a letter or a digit, any script
_APOS = "['\u2019]"
_APOS_ETC = "['\u2019\u2018\u201b]"  # some rules also take left single quotes as apostrophes
_WORD = rf"{_L}(?:{_L}|\d)*(?:[.!?]{_L}(?:{_L}|\d)*)*"  # "dog.the" is one token in PTB 3.4.1
_ACRO = r"[A-Za-z](?:\.[A-Za-z])+"
_HTHING = rf"[A-Za-z0-9][A-Za-z0-9.,]*(?:-(?:{_ACRO}\.|[A-Za-z0-9]+))+"  # t-shirt, 5-year-old
_THING = rf"(?:[dDoOlL]{_APOS_ETC}{_AN})?{_AN}+(?:[-_](?:[dDoOlL]{_APOS_ETC}{_AN})?{_AN}+)*"
_THINGA = r"[A-Z]+(?:[+&][A-Z]+)+"  # AT&T
_REDAUX = rf"{_APOS}(?:[msdMSD]|(?i:re|ve|ll))"
_SREDAUX = rf"(?i:n){_APOS_ETC}(?i:t)"

# Abbreviations that keep their period. PTB's lexer is caseless except inside character classes,
# so "Wash." is an abbreviation and "wash." is not: those entries start with a fixed capital.
_ABBREVIATIONS = "|".join(
    [  # Python takes the first alternative that matches: "a.b." before "a.", "ph.d." before "ph."
        rf"{_ACRO}|(?i:ed\.d|ph\.d|a\.k\.a)",
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
_APOWORD = "|".join(
    [
        rf"{_APOS}n{_APOS}?|[lLdDjJ]{_APOS}|(?i:dunkin|somethin|ol){_APOS}|{_APOS}[2-9]0s",
        rf"{_APOS}(?i:em|till?|cause)|(?i:cont'd\.?|nor'easter|c'mon|e'er|s'mores|ev'ry)",
        rf"(?i:li'l|nat'l)|[A-HJ-XZn]{_APOS_ETC}{_L}{{2,}}",
        rf"{_L}+[aeiouyAEIOUY]{_APOS_ETC}[aeiouA-Z]{_L}*",
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
    _rule(rf"(?i:cannot|{_APOS}twas)", "push3"),
    _rule(rf"(?i:{_APOS}tis|gonna|gotta|lemme|gimme|wanna)", "push2"),
    _rule(r"</?[A-Za-z!][^>]*>"),  # SGML tags
    _rule(r"(?i:&amp;)", "&"),
    _rule(_WORD, context=_REDAUX),  # "dog" of "dog's"
    _rule(r"[A-Za-z]*[A-MO-Za-mo-z]", context=_SREDAUX),  # "do" of "don't"
    _rule(_WORD),
    _rule(_APOWORD),
    _rule(rf"[yY]{_APOS}", context=_L),  # y'all
    _rule(_URL),
    _rule(_EMAIL),
    _rule(rf"@[A-Za-z_]\w*|#{_L}\w*(?:{_AN})"),  # @name, #hashtag
    _rule(_REDAUX, "quote", context="[^A-Za-z]"),
    _rule(_SREDAUX, "quote", context="[^A-Za-z]"),
    _rule(r"\d{1,2}[-/]\d{1,2}[-/]\d{2,4}"),  # dates
    _rule(r"[-+]?(?:\d*(?:[.:,]\d+)+|\d+)"),  # numbers, times
    _rule(r"(?:\d{1,4}-)?\d{1,4}\\?/\d{1,4}"),  # fractions
    _rule(r"(?i:-(?:rrb|lrb|rcb|lcb|rsb|lsb)-|c\.d\.s|pro-|anti-|s&p-500|s&ls|cap'n|c'est)"),
    _rule(r"(?i:c\+\+|[cf]#)"),
    _rule(r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"),
    _rule(r"[A-Z]*\$|#"),  # currency
    _rule(rf"{_BEFORE_NUMBER_ABBREVIATIONS}\.", context=r"\s?\d"),
    _rule(rf"(?:{_ABBREVIATIONS})\."),
    _rule(rf"{_APOS}\d\d", context=r"\s"),  # '90
    _rule(rf"(?:{_WORD}|{_HTHING}|{_THING}|{_THINGA})\.", context="[,;:]"),
    _rule(_SMILEY, "smiley", context="[^A-Za-z0-9]"),
    _rule('"', "drop"),
    _rule(r"[()\[\]{}]", "bracket"),
    _rule(r"<<|>>|[+%&~^|\\<>=/]"),
    _rule(r"-+", "hyphens"),
    _rule(r"\.{3,5}", "drop"),
    _rule(r"@+|#+|_+|\*+"),
    _rule(r"[?!]+|[.,;:\u00a1\u00bf]"),
    _rule(_HTHING),
    _rule(_THING),
    _rule(_THINGA),
    _rule("'", "drop", context=r"[A-Za-z]\S"),  # an opening quote: 'STOP' is not 's TOP'
    _rule("''|[`\u2018\u2019\u201a\u201b]{1,2}|'", "drop"),  # quotes
    _rule(_REDAUX, "quote"),
    _rule(_SREDAUX, "quote"),
]
_QUOTES = str.maketrans({"\u2018": "`", "\u201b": "`", "\u2019": "'"})
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
            tokens.append(token.translate(_QUOTES).lower())
        elif rule.action == "smiley":
            tokens.append(token.lower().replace("(", "-lrb-").replace(")", "-rrb-"))
        elif rule.action == "bracket":
            tokens.append(_BRACKETS[token])
        elif rule.action == "hyphens":
            tokens += [token] if len(token) >= 5 else []
        elif rule.action != "drop":
            tokens.append(rule.action)
    dropped = _PTB_DROPPED if brackets else _DROPPED
    return tuple(t for t in tokens if t not in dropped)


def tokenize(text: str, ptb_brackets: bool = False) -> list[str]:
    """Lowercased PTB tokens without punctuation, as pycocoevalcap's tokenizer gives them;
    brackets are dropped unless `ptb_brackets` (then "(" is `-lrb-`, as in pycocoevalcap).

    >>> tokenize("A dog's ball, RED!  (Don't t-shirts cost $5.50?)")
    ['a', 'dog', "'s", 'ball', 'red', 'do', "n't", 't-shirts', 'cost', '$', '5.50']
    """
    chunks = text.translate(_TRANSLATE).split()
    tokens: list[str] = []
    for i, chunk in enumerate(chunks):
        if chunk.isalpha() and chunk.lower() not in _SPLIT_WORDS:
            tokens.append(chunk.lower())  # the common case, and what the rules would give
        else:
            digit_next = i + 1 < len(chunks) and chunks[i + 1][0].isdecimal()
            tokens += _lex_chunk(chunk, " 0" if digit_next else " ", ptb_brackets)
    return tokens


_CLITIC = re.compile(r" ('s|'re|'ve|'ll|'m|'d|n't)(?=\s|$)")


def detokenize(text: str) -> str:
    """Readable text from PTB tokens, for people: `a dog 's ball` -> `a dog's ball`. The metrics
    tokenize both forms the same way."""
    return _CLITIC.sub(r"\1", text)


def content_ids(ids: Iterable[int]) -> list[int]:
    """The ids up to the first `<eos>`, without `<pad>` and `<bos>` (`<unk>` is kept)."""
    kept = []
    for i in ids:
        if i == EOS_ID:
            break
        if i not in (PAD_ID, BOS_ID):
            kept.append(int(i))
    return kept


class Vocabulary:
    """Word-level tokenizer: maps words to ids and back; ids 0-3 are `<pad> <bos> <eos> <unk>`."""

    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    def __init__(self, words: Iterable[str]):
        self.itos = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> Vocabulary:
        """Keep words seen at least `min_count` times, most frequent first (ties alphabetical)."""
        counts = Counter(w for c in captions for w in tokenize(c))
        kept = sorted(
            (w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w)
        )
        return cls(kept)

    def __len__(self) -> int:
        return len(self.itos)

    def encode_with_info(
        self, caption: str, max_length: int | None = None
    ) -> tuple[list[int], bool]:
        """`<bos> w1 ... wn <eos>` with at most `max_length` words, and whether words were cut."""
        words = tokenize(caption)
        truncated = max_length is not None and len(words) > max_length
        ids = [self.stoi.get(w, self.unk_id) for w in words[:max_length]]
        return [self.bos_id, *ids, self.eos_id], truncated

    def encode(self, caption: str, max_length: int | None = None) -> list[int]:
        """`<bos> w1 ... wn <eos>`, with at most `max_length` words."""
        return self.encode_with_info(caption, max_length)[0]

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first `<eos>`, specials other than `<unk>` dropped."""
        return " ".join(self.itos[i] for i in content_ids(ids))

    def to_dict(self) -> dict:
        return {"type": "word", "itos": self.itos}

    @classmethod
    def from_dict(cls, d: dict) -> Vocabulary:
        vocab = cls(d["itos"][len(SPECIALS) :])
        if vocab.itos != d["itos"]:
            raise ValueError("vocabulary does not start with the special tokens")
        return vocab
