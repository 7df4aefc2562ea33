"""The COCO caption metrics, computed by pycocoevalcap exactly as the papers do.

Values are on pycocoevalcap's own scale: a CIDEr of 0.85 is the "85" of papers. Captions are
tokenized by pycocoevalcap's PTB tokenizer (Java) and scored by its BLEU, METEOR, ROUGE-L and
CIDEr(-D) code; SPICE on request. Without java, BLEU, ROUGE-L and CIDEr are still computed, on
the tokens of our Python port of the PTB tokenizer, and the report's notes say so.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from captionkit.data.ptb_tokenizer import tokenize
from captionkit.errors import CaptionkitError
from captionkit.metrics.java import java_path

METRIC_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
# A caption that decoded to nothing still needs a token for the scorers.
EMPTY_CAPTION = "<empty>"


@dataclass
class MetricReport:
    """The metrics of one predicted caption per image, and how they were computed."""

    scores: dict[str, float]
    """Metric name -> corpus value, in METRIC_KEYS order (then SPICE)."""
    per_image: dict[str, list[float]] = field(default_factory=dict)
    """Metric name (CIDEr, ROUGE-L, METEOR, SPICE) -> one value per image, in prediction order."""
    notes: list[str] = field(default_factory=list)
    """One line for each metric skipped or computed otherwise than pycocoevalcap would."""


def python_ptb_tokenize(captions: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    """`java_ptb_tokenizer.ptb_tokenize` without Java: our Python port of the PTB tokenizer,
    brackets kept."""
    return {
        k: [" ".join(tokenize(c, ptb_brackets=True)) for c in caps] for k, caps in captions.items()
    }


def score_captions(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    meteor: bool = True,
    spice: bool = False,
) -> MetricReport:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr(-D) and, with `spice`, SPICE of one predicted caption
    per image. Both mappings are keyed by image; captions are raw text, tokenized here."""
    _check_inputs(predictions, references)
    keys = list(predictions)
    raw = {k: [predictions[k] if predictions[k].strip() else EMPTY_CAPTION] for k in keys}
    report = MetricReport({})
    if java_path() is not None:
        from captionkit.metrics.java_ptb_tokenizer import ptb_tokenize

        res, gts = ptb_tokenize(raw), ptb_tokenize({k: references[k] for k in keys})
    else:
        skipped = "METEOR skipped; " if meteor else ""
        report.notes.append(
            f"java not found: {skipped}BLEU, ROUGE-L and CIDEr use captionkit's "
            "Python PTB tokenizer"
        )
        res, gts = python_ptb_tokenize(raw), python_ptb_tokenize({k: references[k] for k in keys})
        meteor = False
    res = {k: [v[0] or EMPTY_CAPTION] for k, v in res.items()}  # punctuation only: no tokens
    _java_free_metrics(gts, res, report)
    if meteor:
        _meteor(gts, res, report)
    if spice:
        _spice(gts, res, report)
    order = [k for k in (*METRIC_KEYS, "SPICE") if k in report.scores]
    report.scores = {k: report.scores[k] for k in order}
    return report


def _java_free_metrics(gts: dict, res: dict, report: MetricReport) -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    report.scores.update({f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)})
    for name, scorer in (("ROUGE-L", Rouge()), ("CIDEr", Cider())):
        score, per_image = scorer.compute_score(gts, res)
        report.scores[name] = float(score)
        report.per_image[name] = [float(s) for s in per_image]


def _meteor(gts: dict, res: dict, report: MetricReport) -> None:
    from captionkit.metrics.meteor import meteor_score

    report.scores["METEOR"], report.per_image["METEOR"] = meteor_score(
        gts, {k: v[0] for k, v in res.items()}
    )


def _spice(gts: dict, res: dict, report: MetricReport) -> None:
    from captionkit.metrics.spice import spice_score

    try:
        score, per_image = spice_score(gts, {k: v[0] for k, v in res.items()})
    except CaptionkitError as e:
        report.notes.append(str(e))
        return
    report.scores["SPICE"] = score
    report.per_image["SPICE"] = per_image


def coco_metrics(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    meteor: bool = True,
    spice: bool = False,
) -> dict[str, float]:
    """The corpus values of `score_captions`."""
    return score_captions(predictions, references, meteor, spice).scores


def quick_metrics(predictions: dict[str, str], references: dict[str, list[str]]) -> dict:
    """CIDEr-D and BLEU-4 with our own word tokenizer (the PTB tokenizer's rules, in Python): no
    Java, fast enough for every validation pass."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    _check_inputs(predictions, references)
    res = {k: [" ".join(tokenize(v)) or EMPTY_CAPTION] for k, v in predictions.items()}
    gts = {k: [" ".join(tokenize(c)) for c in references[k]] for k in predictions}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {"CIDEr": float(Cider().compute_score(gts, res)[0]), "BLEU-4": float(bleu[3])}


def quick_cider(predictions: dict[str, str], references: dict[str, list[str]]) -> float:
    """CIDEr-D of `quick_metrics`."""
    return quick_metrics(predictions, references)["CIDEr"]


def _check_inputs(predictions: Mapping, references: Mapping) -> None:
    if not predictions:
        raise CaptionkitError("no predictions to evaluate")
    missing = [k for k in predictions if not references.get(k)]
    if missing:
        raise CaptionkitError(f"no reference captions for image {missing[0]}")
