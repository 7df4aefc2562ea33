"""Our metric wrapper against pycocoevalcap's scorers called directly, as the COCO toolkit does."""

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from test_tokenizers import CAPTIONS

from captionkit.errors import CaptionkitError
from captionkit.metrics import METRIC_KEYS, coco_metrics, quick_cider, quick_metrics
from captionkit.metrics.caption_stats import caption_stats
from captionkit.metrics.coco_metrics import python_ptb_tokenize, score_captions
from captionkit.metrics.java_ptb_tokenizer import ptb_tokenize
from captionkit.metrics.meteor import MeteorJar, meteor_score

from conftest import requires_java

REFS = {
    "1": ["A dog runs across the grass.", "a brown dog running on a lawn", "Dog, running."],
    "2": ["Two children play in the snow.", "kids playing in snow", "two kids in the snow"],
    "3": ["A man rides a red bicycle.", "a cyclist on a red bike", "man riding a bike"],
    "4": ["A cat sleeps on a sofa.", "a cat lying on a couch", "the cat is asleep"],
}
PREDS = {"1": "a dog running on the grass", "2": "two kids play in snow",
         "3": "a man riding a bike", "4": "a dog on a couch"}  # fmt: skip


@pytest.fixture(scope="module")
def tokenized():
    """References and predictions through pycocoevalcap's (Java) PTB tokenizer."""
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    return gts, tok.tokenize({k: [{"caption": v}] for k, v in PREDS.items()})


@pytest.fixture(scope="module")
def expected(tokenized):
    """pycocoevalcap's scorers called directly, as the COCO toolkit does (METEOR apart: its Java
    start-up takes seconds)."""
    bleu, _ = Bleu(4).compute_score(*tokenized)
    out = {f"BLEU-{i + 1}": b for i, b in enumerate(bleu)}
    out["ROUGE-L"] = Rouge().compute_score(*tokenized)[0]
    out["CIDEr"], out["per_image_CIDEr"] = Cider().compute_score(*tokenized)
    return out


@pytest.mark.slow  # METEOR starts Java twice
@requires_java
def test_metrics_equal_pycocoevalcap_under_a_german_locale(expected, tokenized, monkeypatch):
    expected = {**expected, "METEOR": Meteor().compute_score(*tokenized)[0]}
    # pycocoevalcap's METEOR jar cannot read its own numbers under this locale (it waits forever)
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Duser.language=de -Duser.country=DE")
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    report = score_captions(PREDS, REFS)
    assert tuple(report.scores) == METRIC_KEYS and report.notes == []
    for key in METRIC_KEYS:
        assert report.scores[key] == pytest.approx(expected[key], abs=1e-12), key
    assert 0.3 < report.scores["CIDEr"] < 5  # pycocoevalcap's scale, not x100
    np.testing.assert_allclose(report.per_image["CIDEr"], expected["per_image_CIDEr"], atol=1e-12)
    assert len(report.per_image["METEOR"]) == len(report.per_image["ROUGE-L"]) == len(PREDS)


@requires_java
def test_without_java_the_python_tokenizer_gives_the_same_bleu_rouge_cider(expected, tmp_path,
                                                                          monkeypatch):  # fmt: skip
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    report = score_captions(PREDS, REFS)
    assert "METEOR" not in report.scores
    assert report.notes == ["java not found: METEOR skipped; BLEU, ROUGE-L and CIDEr use "
                            "captionkit's Python PTB tokenizer"]  # fmt: skip
    for key in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert report.scores[key] == pytest.approx(expected[key], abs=1e-12), key
    with pytest.raises(CaptionkitError, match="METEOR needs java"):
        meteor_score({"1": ["a dog"]}, {"1": "a dog"})


@requires_java
def test_python_ptb_tokenizer_equals_the_java_one():
    captions = {i: [c] for i, c in enumerate(CAPTIONS)}
    captions["extra"] = ["A dog (brown) runs [fast] {ok}.", "A man's 3-D t-shirt: \"cool\"!",
                         "I can't believe it's 5:30 p.m...", "Two\nlines | one"]  # fmt: skip
    assert python_ptb_tokenize(captions) == ptb_tokenize(captions)


@pytest.mark.slow  # METEOR's Java start-up
@requires_java
def test_meteor_survives_pipes_and_line_breaks():
    refs = {"1": ["a dog | runs", "a dog\nrunning ||| on grass"], "2": ["kids play", "|"]}
    clean = {"1": ["a dog runs", "a dog running on grass"], "2": ["kids play", ""]}
    with MeteorJar() as jar:
        dirty = jar.score(refs, {"1": "a dog|runs\r\nfast", "2": "kids || play"})
        assert jar.score(clean, {"1": "a dog runs fast", "2": "kids play"}) == dirty
    assert dirty[1][1] > 0.5


@requires_java
def test_meteor_that_does_not_answer_is_stopped():
    with pytest.raises(CaptionkitError, match="METEOR stopped: no answer within 0.01 s"):
        meteor_score({"1": ["a dog"]}, {"1": "a dog"}, timeout=0.01)


@requires_java
def test_spice_says_in_one_line_why_it_cannot_run(tmp_path, monkeypatch):
    import captionkit.metrics.spice as spice

    version = spice.java_major_version()  # this machine's, whichever it is
    expected = (f"needs Java 8 or 11, and java is version {version}" if version not in (8, 11)
                else "Stanford CoreNLP 3.6.0 is not in")  # fmt: skip
    assert expected in spice.spice_problem(tmp_path)
    monkeypatch.setattr(spice, "java_major_version", lambda: 21)
    assert "needs Java 8 or 11, and java is version 21" in spice.spice_problem(tmp_path)
    monkeypatch.setattr(spice, "java_major_version", lambda: 11)
    assert "Stanford CoreNLP 3.6.0 is not in" in spice.spice_problem(tmp_path)
    for name in (spice.SPICE_JAR, *(f"lib/{n}" for n in spice.CORENLP)):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("not a jar")
    assert spice.spice_problem(tmp_path) is None
    with pytest.raises(CaptionkitError, match="SPICE failed: .*jar"):
        spice.spice_score({"1": ["a dog"]}, {"1": "a dog"}, folder=tmp_path, timeout=60)


def test_spice_failure_keeps_the_other_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    report = score_captions(PREDS, REFS, spice=True)
    assert "SPICE" not in report.scores and "CIDEr" in report.scores
    assert report.notes[-1] == "SPICE skipped: java not found (SPICE needs Java 8 or 11)"


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


def test_caption_stats():
    preds = {"1": "A dog runs.", "2": "a dog runs", "3": "Two cats (sleeping)", "4": ""}
    stats = caption_stats(preds, ["a dog runs", "a cat"])
    assert stats == {"length_mean": 9 / 4, "vocabulary": 6.0, "novel_percent": 50.0}
    assert "novel_percent" not in caption_stats(preds)
