"""Our vectorised CIDEr-D against pycocoevalcap's Cider."""

import random

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from captionkit.evaluation.cider_d import CiderD

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
