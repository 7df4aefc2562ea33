"""Our metric wrapper against pycocoevalcap's scorers called directly, as the COCO toolkit does."""

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from captionkit.errors import CaptionkitError
from captionkit.evaluation import METRIC_KEYS, coco_metrics, quick_cider, quick_metrics

REFS = {
    "1": ["A dog runs across the grass.", "a brown dog running on a lawn", "Dog, running."],
    "2": ["Two children play in the snow.", "kids playing in snow", "two kids in the snow"],
    "3": ["A man rides a red bicycle.", "a cyclist on a red bike", "man riding a bike"],
    "4": ["A cat sleeps on a sofa.", "a cat lying on a couch", "the cat is asleep"],
}
PREDS = {"1": "a dog running on the grass", "2": "two kids play in snow",
         "3": "a man riding a bike", "4": "a dog on a couch"}  # fmt: skip


def reference_scores():
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in PREDS.items()})
    bleu, _ = Bleu(4).compute_score(gts, res)
    out = {f"BLEU-{i + 1}": b for i, b in enumerate(bleu)}
    out["METEOR"] = Meteor().compute_score(gts, res)[0]
    out["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    out["CIDEr"] = Cider().compute_score(gts, res)[0]
    return out


def test_metrics_equal_pycocoevalcap():
    ours = coco_metrics(PREDS, REFS)
    assert tuple(ours) == METRIC_KEYS
    expected = reference_scores()
    for key in METRIC_KEYS:
        assert ours[key] == pytest.approx(expected[key], abs=1e-12), key
    assert 0.3 < ours["CIDEr"] < 5  # pycocoevalcap's scale, not x100


def test_copying_a_reference_scores_higher_than_a_wrong_caption():
    exact = coco_metrics({k: v[0] for k, v in REFS.items()}, REFS, meteor=False)
    assert exact["BLEU-1"] == pytest.approx(1.0)
    assert exact["CIDEr"] > coco_metrics(PREDS, REFS, meteor=False)["CIDEr"]
    assert "METEOR" not in exact


def test_empty_prediction_is_scored_not_dropped():
    scores = coco_metrics({**PREDS, "4": ""}, REFS, meteor=False)
    assert scores["CIDEr"] < coco_metrics(PREDS, REFS, meteor=False)["CIDEr"]


def test_quick_cider_equals_cider_on_pre_tokenized_text():
    gts = {k: [" ".join(c.lower().replace(",", "").replace(".", "").split()) for c in v]
           for k, v in REFS.items()}  # fmt: skip
    expected = Cider().compute_score(gts, {k: [v] for k, v in PREDS.items()})[0]
    assert quick_cider(PREDS, REFS) == pytest.approx(expected, abs=1e-12)


def test_quick_bleu4_equals_bleu_on_pre_tokenized_text():
    gts = {k: [" ".join(c.lower().replace(",", "").replace(".", "").split()) for c in v]
           for k, v in REFS.items()}  # fmt: skip
    expected = Bleu(4).compute_score(gts, {k: [v] for k, v in PREDS.items()}, verbose=0)[0][3]
    assert quick_metrics(PREDS, REFS)["BLEU-4"] == pytest.approx(expected, abs=1e-12)


def test_missing_references_and_empty_input():
    with pytest.raises(CaptionkitError, match="no reference captions for image 9"):
        coco_metrics({"9": "a dog"}, REFS)
    with pytest.raises(CaptionkitError, match="no predictions"):
        quick_cider({}, REFS)
