"""Our vectorised CIDEr-D against pycocoevalcap's Cider."""

import json
import random

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from captionkit.errors import CaptionkitError
from captionkit.metrics.cider_d import CiderD, DocumentFrequency

from conftest import SizedCorpus

WORDS = "a the dog dogs cat runs sits on in grass red blue man woman street water ball".split()


def random_caption(rng, low=0, high=14):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


@pytest.mark.parametrize("seed", range(3))
def test_equals_pycocoevalcap_on_random_captions(seed):
    rng = random.Random(seed)
    refs = {i: [random_caption(rng, 2) for _ in range(rng.randint(1, 6))] for i in range(300)}
    preds = {i: random_caption(rng) for i in refs}
    expected_mean, expected = Cider().compute_score(refs, {k: [v] for k, v in preds.items()})
    mean, scores = CiderD(refs).corpus_score(preds)
    assert mean == pytest.approx(expected_mean, abs=1e-9)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-9)


def test_copying_a_reference_and_repeated_captions():
    refs = {"a": ["a dog runs on the grass", "the dog is running"], "b": ["a red ball", "ball"],
            "c": ["a cat sits", "the cat is sitting on a mat"]}  # fmt: skip
    cider = CiderD(refs)
    scores = cider.score(["a dog runs on the grass", "a red ball", "a red ball", ""], list("abba"))
    assert scores[1] == scores[2]  # the same caption on the same image
    assert scores[0] > scores[3] == 0.0
    expected = Cider().compute_score({k: refs[k] for k in "ab"}, {"a": [refs["a"][0]], "b": ["x"]})
    assert CiderD({k: refs[k] for k in "ab"}).score([refs["a"][0]], ["a"])[0] == pytest.approx(
        expected[1][0], abs=1e-12
    )


def test_odd_spacing_empty_captions_and_a_nul_word():
    """Captions are split on any whitespace; the NUL word (our internal separator) still counts."""
    refs = {0: ["a \x00 dog", "the dog runs"], 1: ["a cat", "  a  cat\tsits "], 2: ["", "a dog"]}
    for preds in ({0: "a \x00 dog runs", 1: "", 2: "a dog"}, {0: "a dog", 1: " a cat ", 2: ""}):
        expected = Cider().compute_score(refs, {k: [v] for k, v in preds.items()})[1]
        np.testing.assert_allclose(CiderD(refs).corpus_score(preds)[1], expected, rtol=0, atol=1e-9)


# --- realistic captions, document frequencies from another corpus, speed --------------------

SENTENCES = [
    "a black dog is running through the grass", "two children are playing in the snow",
    "a man in a red shirt rides a bike down the street", "a girl in a pink dress jumps",
    "a brown dog carries a stick in its mouth", "people walk along a busy city street",
    "a boy is jumping into a swimming pool", "a woman sits on a bench in the park",
    "the dog 's ball is red", "a group of people stand on a snowy hill",
    "a little girl is climbing a rock wall", "two dogs play together on the beach",
]  # fmt: skip


def realistic(rng, images, per_image=5):
    """Captions made by swapping words between real-looking sentences."""
    words = [s.split() for s in SENTENCES]

    def caption():
        a, b = rng.sample(words, 2)
        cut = rng.randint(1, min(len(a), len(b)) - 1)
        return " ".join(a[:cut] + b[cut:])

    return {i: [caption() for _ in range(per_image)] for i in range(images)}, caption


def pycocoevalcap_with_df(refs, preds, corpus):
    """pycocoevalcap's own CIDEr-D code, with document frequencies from `corpus`."""
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    counted = CiderScorer(n=4, sigma=6.0)
    for captions in corpus.values():
        counted += (captions[0], captions)
    counted.compute_doc_freq()
    scorer = CiderScorer(n=4, sigma=6.0)
    for key in refs:
        scorer += (preds[key], refs[key])
    scorer.document_frequency = counted.document_frequency
    scorer.crefs = SizedCorpus(scorer.crefs, len(corpus))
    return np.array(scorer.compute_cider())


def test_equals_pycocoevalcap_on_realistic_captions():
    rng = random.Random(5)
    refs, caption = realistic(rng, 200)
    preds = {k: caption() for k in refs}
    expected_mean, expected = Cider().compute_score(refs, {k: [v] for k, v in preds.items()})
    mean, scores = CiderD(refs).corpus_score(preds)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-9)
    assert mean == pytest.approx(expected_mean, abs=1e-9) and mean > 0.1


def test_document_frequencies_of_another_corpus_saved_and_loaded(tmp_path):
    rng = random.Random(6)
    corpus, caption = realistic(rng, 150)
    refs = {k: corpus[k] for k in range(40)}  # scored images are part of the corpus (SCST)
    refs["new"] = ["a zebra eats grass", "a zebra in a field"]  # n-grams the corpus lacks
    preds = {k: caption() for k in refs} | {"new": "a zebra stands in the grass"}
    expected = pycocoevalcap_with_df(refs, preds, corpus)
    df = DocumentFrequency.from_references(corpus)
    keys = list(preds)
    np.testing.assert_allclose(CiderD(refs, df=df).score([preds[k] for k in keys], keys),
                               expected, rtol=0, atol=1e-9)  # fmt: skip
    df.save(tmp_path / "df.json")
    saved = json.loads((tmp_path / "df.json").read_text())
    with_a_dog = sum(any(" a dog " in f" {c} " for c in caps) for caps in corpus.values())
    assert saved["images"] == 150 and saved["df"]["a dog"] == with_a_dog > 0
    loaded = DocumentFrequency.load(tmp_path / "df.json")
    assert loaded.images == 150
    np.testing.assert_allclose(CiderD(refs, df=loaded).score([preds[k] for k in keys], keys),
                               expected, rtol=0, atol=1e-9)  # fmt: skip
    # the default, document frequencies of the scored references, is pycocoevalcap's Cider
    assert CiderD(refs).corpus_score(preds)[0] != pytest.approx(float(expected.mean()))


def test_bad_document_frequency_file(tmp_path):
    (tmp_path / "df.json").write_text('{"format": "other"}')
    with pytest.raises(CaptionkitError, match="df.json: not a CIDEr-D document frequency file"):
        DocumentFrequency.load(tmp_path / "df.json")
    doc = {"format": "captionkit-cider-df", "n": 1, "images": 3, "df": {"a": 2, "a dog": 1}}
    (tmp_path / "df.json").write_text(json.dumps(doc))
    with pytest.raises(CaptionkitError, match="df.json: n-grams of more than 1 words"):
        DocumentFrequency.load(tmp_path / "df.json")
    with pytest.raises(CaptionkitError, match="nope.json: cannot read"):
        DocumentFrequency.load(tmp_path / "nope.json")


def spliced_captions(rng, images, per_image=5, vocab=3000, sentences=3000):
    """Distinct captions as bench_cider.py --distinct makes them: the start of one sentence and
    the end of another, sentences of 8-16 words from a Zipf-like vocabulary (as real text has)."""
    words = [f"w{i}" for i in range(vocab)]
    weights = [1 / (i + 1) for i in range(vocab)]
    pool = [rng.choices(words, weights, k=rng.randint(8, 16)) for _ in range(sentences)]

    def caption():
        a, b = rng.sample(pool, 2)
        return " ".join(a[: rng.randint(1, len(a))] + b[rng.randint(0, len(b) - 1) :])

    return {i: [caption() for _ in range(per_image)] for i in range(images)}, caption


@pytest.mark.parametrize("layout", ["scst", "distinct"])
def test_equals_pycocoevalcap_on_5000_captions(layout):
    """SCST's case: 5 captions for each of 1,000 images (pycocoevalcap needs one key each);
    distinct: every caption its own image with 5 references of its own (nothing shared). The
    speed of both layouts is bench/bench_cider.py's (BENCHMARKS.md), not a test's."""
    rng = random.Random(7)
    if layout == "scst":
        images, caption = realistic(rng, 1000)
        refs = {k: images[k % 1000] for k in range(5000)}
    else:
        refs, caption = spliced_captions(rng, 5000)
    preds = {k: caption() for k in refs}
    expected = Cider().compute_score(refs, {k: [v] for k, v in preds.items()})[1]
    scores = CiderD(refs).corpus_score(preds)[1]
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-9)


def test_captions_sharing_no_ngram_with_their_references_score_zero():
    refs = {0: ["a dog runs", "the dog is running"], 1: ["two cats sit", "cats on a mat"]}
    preds = {0: "zebra", 1: "giraffe"}
    expected = Cider().compute_score(refs, {k: [v] for k, v in preds.items()})[1]
    scores = CiderD(refs).corpus_score(preds)[1]
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-12)
    assert scores.tolist() == [0.0, 0.0]


def test_pooled_score_is_the_size_weighted_mean_over_keys():
    """A caption against several images' references pooled (consensus re-ranking) equals the mean
    of its per-image CIDEr-D weighted by their numbers of references, also for words repeated
    within a caption or reference (the clipping min(h, r) counts them), empty groups and a key
    named twice."""
    rng = random.Random(5)
    refs = {i: [random_caption(rng, 1) for _ in range(rng.randint(1, 5))] for i in range(12)}
    refs[0] = ["a dog a dog a dog runs", "a dog runs a dog", "dog dog dog dog"]
    cider = CiderD(refs)
    groups = [
        ["a dog a dog a dog a dog runs", "dog dog", "", random_caption(rng)],
        [],
        [random_caption(rng, 3) for _ in range(5)],
        ["a dog a dog a dog a dog runs"],
    ]
    keys = [[0, 3, 7], [1], [2, 2, 5, 11, 0], [0]]
    got = cider.pooled_score(groups, keys)
    assert [len(g) for g in got] == [4, 0, 5, 1]
    for captions, ks, scores in zip(groups, keys, got):
        sizes = np.array([len(refs[k]) for k in ks], dtype=float)
        for caption, score in zip(captions, scores):
            each = cider.score([caption] * len(ks), ks)
            assert score == pytest.approx(float(each @ sizes / sizes.sum()), abs=1e-12)
    assert got[0][0] > got[0][1] > 0 and got[0][2] == 0.0
    assert got[3][0] == pytest.approx(cider.score([groups[3][0]], [0])[0], abs=1e-12)
    with pytest.raises(CaptionkitError, match="no reference"):
        cider.pooled_score([["a dog"]], [[]])
