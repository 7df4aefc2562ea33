"""The COCO caption metrics, computed by pycocoevalcap exactly as the papers do.

Values are on pycocoevalcap's own scale: a CIDEr of 0.85 is the "85" of papers.
"""

from __future__ import annotations

import shutil

from captionkit.data.vocab import tokenize
from captionkit.errors import CaptionkitError

METRIC_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
# A caption that decoded to nothing still needs a token: the PTB tokenizer drops empty lines.
EMPTY_CAPTION = "<empty>"


def coco_metrics(
    predictions: dict[str, str], references: dict[str, list[str]], meteor: bool = True
) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr(-D) of one predicted caption per image.

    Both dicts are keyed by image id; captions are raw text, tokenized here by the PTB tokenizer.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    _check_inputs(predictions, references)
    if shutil.which("java") is None:
        raise CaptionkitError("java not found: the PTB tokenizer and METEOR need Java (JRE 8+)")
    tokenizer = PTBTokenizer()
    res = tokenizer.tokenize({k: [{"caption": v or EMPTY_CAPTION}] for k, v in predictions.items()})
    gts = tokenizer.tokenize({k: [{"caption": c} for c in references[k]] for k in predictions})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scores["METEOR"] = float(Meteor().compute_score(gts, res)[0])
    scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return scores


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


def _check_inputs(predictions: dict, references: dict) -> None:
    if not predictions:
        raise CaptionkitError("no predictions to evaluate")
    missing = [k for k in predictions if not references.get(k)]
    if missing:
        raise CaptionkitError(f"no reference captions for image {missing[0]}")
