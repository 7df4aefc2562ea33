"""What to decode (`DecodingOptions`, checked as they are made) and what comes out
(`DecodingResult`).

`DecodingOptions()` is the one default of every entry point (`evaluate`, `caption`, `serve`,
`evaluate_run`, `Captioner.caption`): beam search with 3 beams, `<unk>` never generated. Every
check of options that contradict each other lives here, so Python callers get the same errors as
the command line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from captionkit.errors import CaptionkitError

DEFAULT_MAX_LENGTH = 20
DEFAULT_BEAM_SIZE = 3
DEFAULT_DIVERSITY = 0.5  # ruotianluo/ImageCaptioning.pytorch's diversity_lambda
ENSEMBLE_MEANS = ("probability", "log_probability")

# Options of one strategy only, with the value that means "not asked for".
_BEAM_ONLY = {
    "n_best": 1,
    "finished": None,
    "length_penalty": None,
    "beam_groups": 1,
    "diversity": None,
}
_SAMPLING_ONLY = {"num_samples": 1, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": None}


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode: beam search (the default: 3 beams), greedy (`beam_size=1`), diverse beam
    search (`beam_groups`) or sampling (`sample=True`)."""

    beam_size: int | None = None
    """Hypotheses kept per image; 1 means greedy decoding. None: 3 (1 when sampling)."""
    max_length: int | None = None
    """Most tokens in a caption, `<eos>` not counted. None: the run's training `max_length` when
    decoding a trained run (`evaluate_run`, `Captioner`), else 20."""
    n_best: int = 1
    """Beam search: hypotheses returned per image (at most `beam_size`, or `finished`)."""
    finished: int | None = None
    """Beam search: finished hypotheses kept per image (None: `beam_size`). More than
    `beam_size` keeps the search going after its beams' best have ended and collects the
    narrow beam's later endings too: that many candidates (for re-ranking) for less work than
    a beam that wide."""
    allow_unk: bool = False
    """Let the model generate `<unk>` (by default it never does)."""
    bad_endings: bool = False
    """Never end a caption on an article, preposition or conjunction (`filters.BAD_ENDINGS`):
    "a man riding a" cannot happen. Needs the tokenizer (`decode(..., tokenizer=)`)."""
    length_penalty: float | str | None = None
    """Beam ranking: None = total log-probability, "average" = per token, a float α = GNMT's
    score / ((5 + length) / 6) ** α."""
    no_repeat_ngram_size: int = 0
    """Never generate an n-gram of this size twice in one caption (0 = off)."""
    beam_groups: int = 1
    """Diverse beam search (Vijayakumar et al. 2018): the beams split into this many groups
    (it must divide `beam_size`); 1 = plain beam search."""
    diversity: float | None = None
    """Diverse beam search: λ, the penalty on a token per earlier group that chose it at the same
    step (Hamming diversity). None: 0.5 with groups."""
    sample: bool = False
    """Sample each token instead of taking the most probable."""
    num_samples: int = 1
    """Sampling: captions drawn per image."""
    temperature: float = 1.0
    """Sampling: divide the logits by this before drawing."""
    top_k: int = 0
    """Sampling: draw from the k most probable tokens only (0 = all)."""
    top_p: float = 1.0
    """Sampling: draw from the smallest set of tokens whose probability reaches p (nucleus)."""
    seed: int | None = None
    """Sampling: seed of the random generator (None = torch's global one)."""
    attention: bool = False
    """Return each token's attention weights over the grid (models that attend): off by default,
    as collecting them slows beam search by about a tenth."""
    ensemble_mean: str = "probability"
    """Ensembles: each step's distribution is the log of the members' mean probability
    ("probability") or the mean of their log-probabilities ("log_probability")."""

    def __post_init__(self):
        """Refuse values no strategy can use and options the chosen strategy would ignore,
        naming the fields (a user may have typed them)."""
        if self.beam_size is None:  # frozen: the resolved default is set once, here
            object.__setattr__(self, "beam_size", 1 if self.sample else DEFAULT_BEAM_SIZE)
        self._check_ranges()
        self._check_strategy()
        if self.beam_groups > 1 and self.diversity is None:
            object.__setattr__(self, "diversity", DEFAULT_DIVERSITY)

    def _check_ranges(self) -> None:
        checks = [
            ("beam_size", self.beam_size >= 1, "at least 1"),
            ("max_length", self.max_length is None or self.max_length >= 1, "at least 1"),
            ("n_best", self.n_best >= 1, "at least 1"),
            ("finished", self.finished is None or self.finished >= 1, "at least 1"),
            ("no_repeat_ngram_size", self.no_repeat_ngram_size >= 0, "0 (off) or more"),
            ("beam_groups", self.beam_groups >= 1, "at least 1"),
            ("diversity", self.diversity is None or _is_finite_number(self.diversity)
             and self.diversity >= 0, "0 or more"),
            ("num_samples", self.num_samples >= 1, "at least 1"),
            ("temperature", self.temperature > 0, "above 0"),
            ("top_k", self.top_k >= 0, "0 (off) or more"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("ensemble_mean", self.ensemble_mean in ENSEMBLE_MEANS,
             " or ".join(repr(m) for m in ENSEMBLE_MEANS)),
        ]  # fmt: skip
        for name, ok, expected in checks:
            if not ok:
                raise CaptionkitError(f"{name} must be {expected}, not {getattr(self, name)!r}")
        penalty = self.length_penalty
        if not (penalty in (None, "average") or _is_finite_number(penalty)):
            raise CaptionkitError(
                f"length_penalty must be None, 'average' or a number, not {penalty!r}"
            )

    def _check_strategy(self) -> None:
        if self.sample:
            given = [n for n, unset in _BEAM_ONLY.items() if getattr(self, n) != unset]
            given = ["beam_size"] * (self.beam_size != 1) + given
            if given:
                raise CaptionkitError(
                    f"{', '.join(given)}: beam search options, not used with sample"
                )
            return
        given = [n for n, unset in _SAMPLING_ONLY.items() if getattr(self, n) != unset]
        if given:
            raise CaptionkitError(f"{', '.join(given)}: sampling options, used only with sample")
        if self.n_best > max(self.beam_size, self.finished or 0):
            more = f" and finished {self.finished}" if self.finished else ""
            raise CaptionkitError(
                f"n_best {self.n_best} is more than beam_size {self.beam_size}{more}"
            )
        if self.beam_size == 1 and self.length_penalty is not None:
            raise CaptionkitError("length_penalty ranks beams: it needs beam_size 2 or more")
        if self.beam_size % self.beam_groups:
            raise CaptionkitError(
                f"beam_groups {self.beam_groups} must divide beam_size {self.beam_size}"
            )
        if self.beam_groups == 1 and self.diversity is not None:
            raise CaptionkitError("diversity penalises beam groups: it needs beam_groups 2 or more")

    def describe(self) -> str:
        """A few words for reports: "beam 3", "greedy (<unk> allowed)", "sampling (T=0.7)"."""
        if self.sample:
            name, extra = "sampling", [f"{self.num_samples} per image"] * (self.num_samples > 1)
            extra += [f"T={self.temperature:g}"] * (self.temperature != 1.0)
            extra += [f"top-k {self.top_k}"] * (self.top_k > 0)
            extra += [f"top-p {self.top_p:g}"] * (self.top_p < 1.0)
            extra += [f"seed {self.seed}"] * (self.seed is not None)
        else:
            name = "greedy" if self.beam_size == 1 else f"beam {self.beam_size}"
            extra = []
            if self.beam_groups > 1:
                extra.append(f"{self.beam_groups} groups, diversity {self.diversity:g}")
            extra += [f"length penalty {self.length_penalty}"] * (self.length_penalty is not None)
            extra += [f"{self.finished} finished kept"] * (self.finished is not None)
        n = self.no_repeat_ngram_size
        extra += [f"no repeated {n}-grams"] * (n > 0)
        extra += ["no bad endings"] * self.bad_endings
        extra += ["<unk> allowed"] * self.allow_unk
        extra += ["mean log-probability"] * (self.ensemble_mean == "log_probability")
        return f"{name} ({', '.join(extra)})" if extra else name


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class DecodingResult:
    """One hypothesis: token ids without `<bos>`/`<eos>`, its total log-probability, and when
    `DecodingOptions.attention` asks for them (models with attention) the weights over the grid
    for every generated token, `<eos>` included (`len(tokens) + 1` rows of L weights)."""

    tokens: list[int]
    score: float
    attention: list[list[float]] | None = None
