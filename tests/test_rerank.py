"""Re-ranking: the neighbour index, its k-NN, and consensus and MBR against pycocoevalcap."""

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from captionkit.decoding import DecodingOptions
from captionkit.errors import CaptionkitError
from captionkit.reranking import NeighbourIndex, Reranker, RerankOptions, write_neighbour_index
from captionkit.reranking.neighbours import (
    INDEX_CAPTIONS,
    INDEX_FEATURES,
    index_training_images,
)
from captionkit.reranking.rerank import cider_text, mixed

from conftest import pycocoevalcap_cider

PLAIN = RerankOptions("none")  # the beam's own best

SENTENCES = [
    "A black dog is running through the grass.", "Two children are playing in the snow",
    "a man in a red shirt rides a bike down the street", "A girl, in a pink dress, jumps.",
    "a brown dog carries a stick in its mouth", "people walk along a busy city street",
    "a boy is jumping into a swimming pool", "A woman sits on a bench in the park",
    "The dog's ball is red.", "a group of people stand on a snowy hill",
    "a little girl is climbing a rock wall", "two dogs play together on the beach",
]  # fmt: skip


def spliced(rng: random.Random) -> str:
    """A caption made of the start of one sentence and the end of another."""
    a, b = (s.split() for s in rng.sample(SENTENCES, 2))
    return " ".join(a[: rng.randint(1, len(a) - 1)] + b[rng.randint(1, len(b) - 1) :])


def brute_force_knn(features: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    """Rows of the k most cosine-similar features, one dot product at a time."""
    q = query / np.linalg.norm(query)
    sims = [float(np.dot(q, f / np.linalg.norm(f))) for f in features]
    return sorted(range(len(features)), key=lambda i: -sims[i])[:k]


@pytest.fixture
def corpus_run(tmp_path):
    """A run folder with a neighbour index of 60 images (random features, 3-5 captions each)."""
    rng = random.Random(0)
    captions = [[spliced(rng) for _ in range(rng.randint(3, 5))] for _ in range(60)]
    pooled = np.random.default_rng(0).normal(size=(60, 24)).astype(np.float32)
    write_neighbour_index(tmp_path, pooled, [f"img{i}.jpg" for i in range(60)], captions,
                          encoder="enc-fp")  # fmt: skip
    return tmp_path, pooled, captions


def test_index_round_trip(corpus_run):
    run, pooled, captions = corpus_run
    index = NeighbourIndex.load(run)
    assert index.keys == [f"img{i}.jpg" for i in range(60)] and index.captions == captions
    assert index.encoder == "enc-fp" and len(index) == 60
    unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(index.features.numpy(), unit, atol=2e-3)  # float16 on disk
    assert index.features.dtype == torch.float32
    doc = json.loads((run / INDEX_CAPTIONS).read_text())
    assert doc["dim"] == 24 and doc["images"] == 60


def test_neighbours_are_found_in_float32_under_a_bf16_autocast(corpus_run):
    # evaluate --quantize bf16 decodes and re-ranks under autocast: the search must not follow.
    run, pooled, _ = corpus_run
    index = NeighbourIndex.load(run)
    plain = index.nearest(pooled[:5], 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = index.nearest(torch.from_numpy(pooled[:5]), 7)
    assert under[0].dtype == np.float32
    np.testing.assert_array_equal(under[1], plain[1])
    np.testing.assert_allclose(under[0], plain[0], rtol=1e-6)


def test_index_from_a_feature_store(tmp_path):
    paths = [tmp_path / f"{n}.jpg" for n in "abc"]
    store = SimpleNamespace(pooled=np.arange(12, dtype=np.float16).reshape(4, 3) + 1,
                            rows=lambda ps: [{p: i for i, p in enumerate(paths)}[p] + 1
                                             for p in ps])  # fmt: skip
    records = [SimpleNamespace(filename=p.name, captions=[f"caption of {p.stem}"]) for p in paths]
    index_training_images(tmp_path, store, paths[::-1], records[::-1], "fp")
    index = NeighbourIndex.load(tmp_path)
    assert index.keys == ["c.jpg", "b.jpg", "a.jpg"] and index.captions[0] == ["caption of c"]
    expected = store.pooled[[3, 2, 1]].astype(np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(index.features.numpy(), expected, atol=1e-3)


def test_index_missing_or_damaged(corpus_run, tmp_path_factory):
    empty = tmp_path_factory.mktemp("no-index")
    with pytest.raises(CaptionkitError, match=f"{INDEX_CAPTIONS}: no such file"):
        NeighbourIndex.load(empty)
    run, _, _ = corpus_run
    good = (run / INDEX_CAPTIONS).read_text()
    (run / INDEX_CAPTIONS).write_text(good[:100])
    with pytest.raises(CaptionkitError, match=f"{INDEX_CAPTIONS}: cannot read"):
        NeighbourIndex.load(run)
    (run / INDEX_CAPTIONS).write_text('{"format": "other"}')
    with pytest.raises(CaptionkitError, match="not a captionkit neighbour index"):
        NeighbourIndex.load(run)
    doc = json.loads(good)
    (run / INDEX_CAPTIONS).write_text(json.dumps({**doc, "captions": doc["captions"][:-1]}))
    with pytest.raises(CaptionkitError, match="'captions' must hold"):
        NeighbourIndex.load(run)
    (run / INDEX_CAPTIONS).write_text(json.dumps({**doc, "dim": 25}))
    with pytest.raises(CaptionkitError, match=r"features \[60, 24\], but .* 60 images of 25"):
        NeighbourIndex.load(run)
    (run / INDEX_CAPTIONS).write_text(good)
    features = (run / INDEX_FEATURES).read_bytes()
    (run / INDEX_FEATURES).write_bytes(features[: len(features) // 2])
    with pytest.raises(CaptionkitError, match=f"{INDEX_FEATURES}: not a neighbour index"):
        NeighbourIndex.load(run)
    (run / INDEX_FEATURES).unlink()
    with pytest.raises(CaptionkitError, match=f"{INDEX_FEATURES}: no such file"):
        NeighbourIndex.load(run)


def test_knn_equals_brute_force(corpus_run):
    run, _, _ = corpus_run
    index = NeighbourIndex.load(run)
    queries = np.random.default_rng(1).normal(size=(7, 24)).astype(np.float32)
    sims, rows = index.nearest(queries, 9)
    assert rows.shape == sims.shape == (7, 9)
    stored = index.features.numpy()
    for query, got, got_sims in zip(queries, rows, sims):
        assert got.tolist() == brute_force_knn(stored, query, 9)
        assert np.all(np.diff(got_sims) <= 0)
    _, everything = index.nearest(queries[:1], 100)  # k beyond the index: all of it
    assert sorted(everything[0].tolist()) == list(range(60))
    with pytest.raises(CaptionkitError, match="24-dimensional features, queried with"):
        index.nearest(queries[:, :5], 3)


def candidates_for(rng: random.Random, images: int, per_image: int) -> list[list[str]]:
    return [[spliced(rng) for _ in range(per_image)] for _ in range(images)]


def test_consensus_equals_pycocoevalcap(corpus_run):
    run, pooled, captions = corpus_run
    index = NeighbourIndex.load(run)
    rng = random.Random(2)
    candidates = candidates_for(rng, 6, 4)
    candidates[0][1] = candidates[0][0]  # a repeated candidate scores the same
    candidates[1][2] = "zebra giraffe"  # no n-gram of the corpus
    queries = np.random.default_rng(3).normal(size=(6, 24)).astype(np.float32)
    queries[2] = pooled[5]  # an indexed image: it is its own nearest neighbour
    k = 7
    reranker = Reranker(RerankOptions("consensus", candidates=4, k=k), index)
    scores = reranker.scores(candidates, queries)

    corpus = [[cider_text(c) for c in caps] for caps in captions]
    stored = index.features.numpy()
    for query, cands, got in zip(queries, candidates, scores):
        refs = [c for row in brute_force_knn(stored, query, k) for c in corpus[row]]
        expected = [pycocoevalcap_cider(cider_text(c), refs, corpus) for c in cands]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    assert scores[0][0] == scores[0][1] and scores[1][2] == 0.0
    assert max(s.max() for s in scores) > 0.5
    order = Reranker(RerankOptions("consensus", candidates=4, k=k, weight=0.0), index).order(
        candidates, [[-1.0, -2.0, -3.0, -4.0]] * 6, queries
    )
    assert [o[0] for o in order] == [int(np.argmax(s)) for s in scores]


def test_mbr_equals_pycocoevalcap(corpus_run):
    run, _, captions = corpus_run
    index = NeighbourIndex.load(run)
    rng = random.Random(4)
    candidates = candidates_for(rng, 5, 5)
    candidates[0][3] = candidates[0][1]  # two votes for one caption
    candidates[3] = candidates[3][:1]  # a single candidate: nothing to agree with
    candidates[4][0] = ""  # an empty caption
    scores = Reranker(RerankOptions("mbr"), index).scores(candidates)

    corpus = [[cider_text(c) for c in caps] for caps in captions]
    for cands, got in zip(candidates, scores):
        texts = [cider_text(c) for c in cands]
        expected = [
            pycocoevalcap_cider(t, texts[:i] + texts[i + 1 :], corpus) if len(texts) > 1 else 0.0
            for i, t in enumerate(texts)
        ]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    assert scores[3].tolist() == [0.0] and scores[4][0] == 0.0
    assert scores[0][1] == scores[0][3] and scores[0].max() > 0.2


def test_mixing_with_the_log_probability():
    rerank, logprob = np.array([1.0, 3.0, 2.0]), np.array([-1.0, -5.0, -2.0])
    np.testing.assert_allclose(mixed(rerank, logprob, 0.0), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(mixed(rerank, logprob, 1.0), [1.0, 0.0, 0.75])
    np.testing.assert_allclose(mixed(rerank, logprob, 0.5), [0.5, 0.5, 0.625])
    np.testing.assert_allclose(mixed(np.ones(3), logprob, 0.0), [0.0, 0.0, 0.0])  # ties


def test_weight_one_keeps_the_model_order(corpus_run):
    run, _, _ = corpus_run
    index = NeighbourIndex.load(run)
    candidates = candidates_for(random.Random(5), 3, 4)
    logprobs = [[-1.0, -1.5, -2.0, -9.0]] * 3
    for method in ("consensus", "mbr"):
        reranker = Reranker(RerankOptions(method, candidates=4, weight=1.0, k=5), index)
        pooled = np.ones((3, 24), dtype=np.float32)
        assert reranker.order(candidates, logprobs, pooled) == [[0, 1, 2, 3]] * 3
    assert Reranker(RerankOptions(), None).order(candidates, logprobs) == [[0, 1, 2, 3]] * 3


def test_reranking_needs_the_index_and_valid_options():
    with pytest.raises(CaptionkitError, match="--rerank consensus: runs/x has no neighbour index"):
        Reranker(RerankOptions("consensus"), None, "runs/x")
    with pytest.raises(CaptionkitError, match="--rerank mbr: runs/x has no neighbour index"):
        Reranker(RerankOptions("mbr"), None, "runs/x")
    for kwargs, message in [({"method": "best"}, "one of auto, none, consensus, mbr"),
                            ({"method": "mbr", "candidates": 1}, "rerank_candidates must be"),
                            ({"weight": 1.5}, r"rerank_weight must be in \[0, 1\]"),
                            ({"k": 0}, "rerank k must be at least 1")]:  # fmt: skip
        with pytest.raises(CaptionkitError, match=message):
            RerankOptions(**kwargs)


def test_auto_is_consensus_for_an_indexed_run_decoded_by_beam_search():
    auto = RerankOptions(candidates=4, k=7)
    assert auto.method == "auto" and not auto.active
    beam3 = DecodingOptions()
    assert auto.resolved(True, beam3) == RerankOptions("consensus", candidates=4, k=7)
    assert auto.resolved(True, DecodingOptions(beam_size=5, n_best=4)).method == "consensus"
    for leaves_alone in [DecodingOptions(beam_size=1), DecodingOptions(sample=True),
                         DecodingOptions(beam_size=4, beam_groups=2),
                         DecodingOptions(beam_size=5, n_best=5)]:  # fmt: skip
        assert auto.resolved(True, leaves_alone) == RerankOptions("none", candidates=4, k=7)
    assert auto.resolved(False, beam3).method == "none"  # no neighbour index: the beam's best
    for method in ("none", "consensus", "mbr"):
        chosen = RerankOptions(method)
        assert chosen.resolved(True, DecodingOptions(beam_size=1)) is chosen


def test_candidates_come_from_a_wider_beam_or_samples():
    options = RerankOptions("mbr", candidates=5)
    beam = options.decoding(DecodingOptions(beam_size=3))
    assert (beam.beam_size, beam.n_best) == (5, 5)
    assert options.decoding(DecodingOptions(beam_size=8)).beam_size == 8
    sampled = options.decoding(DecodingOptions(sample=True, num_samples=2, top_p=0.9))
    assert (sampled.num_samples, sampled.top_p) == (5, 0.9)
    assert RerankOptions().decoding(DecodingOptions(beam_size=3)) == DecodingOptions(beam_size=3)
    # Or from the requested beam, kept going until it has that many endings.
    finished = RerankOptions("consensus", candidates_from="finished").decoding(DecodingOptions())
    assert (finished.beam_size, finished.finished, finished.n_best) == (3, 8, 8)
    assert "finished of the beam" in RerankOptions("mbr", candidates_from="finished").describe()
    with pytest.raises(CaptionkitError, match="candidates_from must be one of wide_beam, fin"):
        RerankOptions(candidates_from="samples")


# --- wiring: Captioner, POST /caption, the command line (a tiny untrained model) ---------------


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 255, (40, 56, 3), dtype=np.uint8) for _ in range(n)]


def test_captioner_reranks_its_candidates(indexed_run, lite0):
    from captionkit.models.run_folder import load_checkpoint
    from captionkit.serving import Captioner

    captioner = Captioner(load_checkpoint(indexed_run), lite0)
    images = _images(3)
    beam = captioner.caption(images, DecodingOptions(beam_size=4, n_best=4), rerank=PLAIN)
    for method in ("consensus", "mbr"):
        rerank = RerankOptions(method, candidates=4, weight=0.0, k=5)
        reranked = captioner.caption(images, DecodingOptions(n_best=3), rerank=rerank)
        reranker = captioner.reranker(rerank)
        pooled = captioner._features([captioner._image(im) for im in images])[0]
        scores = reranker.scores([[c.text for c in hyps] for hyps in beam], pooled)
        for hyps, got, s in zip(beam, reranked, scores):
            # The first 3 of the 4 candidates, re-ordered by the re-ranker.
            assert {(c.text, c.score) for c in got} <= {(c.text, c.score) for c in hyps}
            assert got[0].text == hyps[int(np.argmax(s))].text  # the highest CIDEr-D first
        best = captioner.caption(images, rerank=rerank)
        assert [len(h) for h in best] == [1, 1, 1] and [h[0].text for h in best] == [
            h[0].text for h in reranked
        ]
    same = captioner.caption(images, rerank=RerankOptions("mbr", 4, weight=1.0))
    assert [h[0].text for h in same] == [h[0].text for h in beam]  # W = 1: the model's order


def test_captions_are_reranked_by_default_where_the_run_can(indexed_run, tiny_attention_run,
                                                           lite0):  # fmt: skip
    from captionkit.models.run_folder import load_checkpoint
    from captionkit.serving import Captioner

    images = _images(6)
    indexed = Captioner(load_checkpoint(indexed_run), lite0)
    texts = lambda hyps_per_image: [h[0].text for h in hyps_per_image]  # noqa: E731
    plain, consensus = (
        texts(indexed.caption(images, rerank=PLAIN)),
        texts(indexed.caption(images, rerank=RerankOptions("consensus"))),
    )
    assert plain != consensus  # else this test could not tell the two apart
    assert texts(indexed.caption(images)) == consensus
    greedy = DecodingOptions(beam_size=1)
    assert texts(indexed.caption(images, greedy)) == texts(
        indexed.caption(images, greedy, rerank=PLAIN)
    )
    unindexed = Captioner(load_checkpoint(tiny_attention_run), lite0)  # no error: the beam's best
    assert texts(unindexed.caption(images)) == texts(unindexed.caption(images, rerank=PLAIN))


def test_caption_endpoint_reranks(indexed_run, tiny_attention_run, lite0):
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from captionkit.models.run_folder import load_checkpoint
    from captionkit.serving import Captioner
    from captionkit.serving.app import create_app

    buffer = io.BytesIO()
    Image.fromarray(_images(1)[0]).save(buffer, "PNG")
    files = [("file", ("a.png", buffer.getvalue(), "image/png"))]
    captioner = Captioner(load_checkpoint(indexed_run), lite0)
    captioner.rerank = RerankOptions("none", candidates=3, k=4)
    with TestClient(create_app(captioner)) as client:
        answer = client.post("/caption", files=files, data={"rerank": "mbr", "n_best": "2"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["decoding"] == (
            "beam 3 (no bad endings), rerank mbr (3 candidates, weight 0.3)"
        )
        expected = captioner.caption([Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")],
                                     DecodingOptions(n_best=2, bad_endings=True),
                                     rerank=RerankOptions("mbr", 3))  # fmt: skip
        assert [c["caption"] for c in answer.json()["images"][0]["captions"]] == [
            c.text for c in expected[0]
        ]
        bad = client.post("/caption", files=files, data={"rerank": "best"})
        assert bad.status_code == 422 and "rerank must be one of auto, none" in bad.json()["error"]
    with TestClient(create_app(Captioner(load_checkpoint(indexed_run), lite0))) as client:
        answer = client.post("/caption", files=files)  # the default: auto
        assert answer.json()["decoding"] == (  # what ran: the beam widened to the candidates
            "beam 8 (no bad endings), rerank consensus (8 candidates, weight 0.3, k=60)"
        )
    plain = Captioner(load_checkpoint(tiny_attention_run), lite0)
    with TestClient(create_app(plain)) as client:
        answer = client.post("/caption", files=files)  # auto, no index: the beam's best
        assert answer.status_code == 200 and answer.json()["decoding"] == "beam 3 (no bad endings)"
        answer = client.post("/caption", files=files, data={"rerank": "consensus"})
        assert answer.status_code == 400
        assert f"{tiny_attention_run} has no neighbour index" in answer.json()["error"]


def test_cli_rerank_options(indexed_run, tiny_attention_run, tmp_path, capsys):
    from PIL import Image

    from captionkit.cli import main

    path = tmp_path / "a.png"
    Image.fromarray(_images(1)[0]).save(path)
    argv = ["caption", "--checkpoint", str(indexed_run), "--json", str(path), "--n-best", "2"]
    assert main([*argv, "--rerank", "consensus", "--rerank-k", "3"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert len(line["captions"]) == 2
    assert main(["caption", "--checkpoint", str(tiny_attention_run), str(path), "--rerank",
                 "mbr"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith(f"error: --rerank mbr: {tiny_attention_run} has no neighbour index")
    assert main([*argv, "--rerank", "consensus", "--rerank-weight", "2"]) == 1
    assert "rerank_weight must be in [0, 1], not 2.0" in capsys.readouterr().err
