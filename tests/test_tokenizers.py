"""Tokenizers: the word tokenizer against the real PTB tokenizer, BPE, and saving both."""

import json

import pytest
import torch

from captionkit.data.ptb_tokenizer import tokenize
from captionkit.data.tokenizers import (
    BpeTokenizer,
    Tokenizer,
    WordTokenizer,
    build_tokenizer,
    tokenizer_from_dict,
)
from captionkit.data.vocab import Vocabulary
from captionkit.decoding import DecodingOptions, decode
from captionkit.errors import CaptionkitError
from captionkit.models import create_model
from captionkit.models.run_folder import load_checkpoint, save_checkpoint

from conftest import requires_java

# Flickr-style captions with the things that make tokenizers disagree.
CAPTIONS = [
    "A black dog is running through the grass.",
    "A dog's ball is lying on the ground , next to a tree .",
    "The children's toys are scattered across the floor.",
    "Two boys' bikes lean against the fence.",
    "A man doesn't look happy; he's holding an umbrella.",
    "A woman who can't find her keys is searching her bag.",
    "They're playing soccer in the park, and it's raining.",
    "I'm not sure what this is, but it won't stop barking!",
    "A girl in a pink t-shirt jumps on a trampoline.",
    "A five-year-old boy wears a brand-new T-Shirt.",
    "A man in a red jacket (left) talks to a woman.",
    "Three people [one in blue] stand near a {strange} sign.",
    "A dog jumps over a 5.5 foot bar at 3:30 p.m.",
    "About 1,000 people run a 10k race in 2012.",
    'A sign reads "STOP" at the end of the road.',
    "A sign that says 'No Parking' is on the wall.",
    "A man wearing a \u201cHello\u201d shirt waves at the camera.",
    "The boy\u2019s dog doesn\u2019t like the rain.",
    "A group of people - some in costumes - walk down the street.",
    "A skier -- wearing orange -- flies through the air...",
    "A crowd watches a concert\u2026 at night.",
    "A man on a bike \u2014 wearing a helmet \u2014 rides past.",
    "A woman sits in a caf\u00e9 reading a newspaper.",
    "A na\u00efve-looking puppy sits beside a jalape\u00f1o plant in S\u00e3o Paulo.",
    "Zo\u00eb and her friend smile for the camera.",
    "A DOG RUNS THROUGH THE SNOW!",
    "A MAN'S HAT IS BLOWING AWAY.",
    "Two  dogs   play   in  the  water .",
    "A brown and white dog is running on the beach?!",
    "What is this dog doing??",
    "Rock & roll band performs on stage.",
    "A woman with a black/white striped shirt holds a cup.",
    "The dog and/or cat sleep on the couch.",
    "A man at AT&T headquarters talks on a phone.",
    "A girl eats a hot dog at the 4th of July parade.",
    "A man in his 20s wears a Yankees cap.",
    "People dressed in 1920's clothing dance.",
    "The kids are wearing '80s outfits.",
    "A boy with a #1 foam finger cheers.",
    "A woman pays $5 for a cup of coffee.",
    "A 50% off sign hangs in the shop window.",
    "A man is fishing at 6 o'clock in the morning.",
    'A young girl says, "I\'m ready!"',
    "A man rides a bike on St. Patrick's Day.",
    "Mr. Smith and Dr. Jones shake hands.",
    "A dog, a cat, etc. are in the yard.",
    "A child plays with a toy (a red truck).",
    "A man wearing a baseball cap,sunglasses and shorts.",
    "A dog.A cat.",
    "A dog runs down the hill.The end.",
    "A hiker on Mt. Rainier looks at the view.",
    "The U.S. flag waves in the wind.",
    "A police officer in Washington, D.C. directs traffic.",
    "A man in a wet-suit surfs a wave.",
    "Two women chat over a cup of tea ; one laughs .",
    "A little girl 's shoes are untied.",
    "A man is gonna jump into the lake.",
    "A boy who cannot swim sits by the pool.",
    "A dog with a frisbee in it's mouth.",
    "Children play in a fountain on a hot day :)",
    'A man holds a sign that reads "Will work for food".',
    "A surfer rides a 10-foot wave!!!",
    "A man wearing a 3-D glasses watches a movie.",
    "A woman's e-mail is displayed on the laptop screen.",
    'A dog sits next to a sign : "Beware of dog" .',
]
# The one deliberate difference from PTB (see captionkit.data.vocab): bracket tokens are dropped.
BRACKETS = {"-lrb-", "-rrb-", "-lsb-", "-rsb-", "-lcb-", "-rcb-"}


@requires_java
def test_tokenize_equals_the_evaluation_ptb_tokenizer():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    out = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(CAPTIONS)})
    for i, caption in enumerate(CAPTIONS):
        expected = [t for t in out[i][0].split() if t not in BRACKETS]
        assert tokenize(caption) == expected, caption


@pytest.mark.parametrize(
    ("caption", "tokens"),
    [
        ("A dog's ball, RED!", ["a", "dog", "'s", "ball", "red"]),
        ("Don't stop: it won't.", ["do", "n't", "stop", "it", "wo", "n't"]),
        ("a t-shirt (5.5 in.) at 3:30", ["a", "t-shirt", "5.5", "in", "at", "3:30"]),
        ("a/b & c\u2014d\u2026", ["a/b", "&", "c", "d"]),
        (
            "the kids' caf\u00e9 on St. Mark's",
            ["the", "kids", "caf\u00e9", "on", "st.", "mark", "'s"],
        ),
        ("wow!!! ok?", ["wow", "!!!", "ok"]),
        ("", []),
    ],
)
def test_tokenize_examples(caption, tokens):
    assert tokenize(caption) == tokens


def test_word_tokenizer_round_trip_and_truncation():
    word = build_tokenizer("word", CAPTIONS, min_count=2)
    assert isinstance(word, Vocabulary) and WordTokenizer is Vocabulary
    assert isinstance(word, Tokenizer)
    assert word.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    ids = word.encode("A man's dog, the zebra.")
    assert word.decode([*ids, 0, 0]) == "a man 's dog the <unk>"
    assert word.encode_with_info("a dog runs", max_length=3) == (word.encode("a dog runs"), False)
    cut, truncated = word.encode_with_info("a dog runs fast", max_length=2)
    assert truncated and word.decode(cut) == "a dog"
    restored = tokenizer_from_dict(json.loads(json.dumps(word.to_dict())))
    assert isinstance(restored, Vocabulary) and restored.itos == word.itos
    assert [restored.encode(c) for c in CAPTIONS] == [word.encode(c) for c in CAPTIONS]


@pytest.fixture(scope="module")
def bpe() -> BpeTokenizer:
    return build_tokenizer("bpe", CAPTIONS, vocab_size=150)


def test_bpe_specials_and_vocab_size(bpe):
    assert isinstance(bpe, Tokenizer)
    assert [bpe.hf.id_to_token(i) for i in range(4)] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert (bpe.pad_id, bpe.bos_id, bpe.eos_id, bpe.unk_id) == (0, 1, 2, 3)
    assert len(bpe) == 150
    assert len(build_tokenizer("bpe", CAPTIONS, vocab_size=120)) == 120


def test_bpe_decodes_to_the_word_tokens(bpe):
    for caption in CAPTIONS:
        ids, truncated = bpe.encode_with_info(caption)
        assert ids[0] == bpe.bos_id and ids[-1] == bpe.eos_id and not truncated
        assert bpe.decode(ids) == " ".join(tokenize(caption)), caption
    # Pieces of rare words are rejoined; padding after <eos> and <bos> are ignored.
    ids = bpe.encode("An umbrella-shaped trampoline")
    assert len(ids) > 5
    assert bpe.decode([*ids, 0, 5, 6]) == "an umbrella-shaped trampoline"


def test_bpe_unknown_characters_and_truncation(bpe):
    assert bpe.decode(bpe.encode("a dog \u2603 runs")) == "a dog <unk> runs"
    ids, truncated = bpe.encode_with_info("a black dog is running", max_length=3)
    assert truncated and len(ids) == 5 and ids == bpe.encode("a black dog is running")[:4] + [2]


def test_bpe_saves_and_restores_exactly(bpe):
    saved = json.loads(json.dumps(bpe.to_dict()))
    assert saved["type"] == "bpe" and isinstance(saved["tokenizer"], str)
    restored = tokenizer_from_dict(saved)
    assert isinstance(restored, BpeTokenizer) and len(restored) == len(bpe)
    test_set = [*CAPTIONS, "An unseen caption about zebras \u00e0 la mode, 42!"]
    assert [restored.encode(c) for c in test_set] == [bpe.encode(c) for c in test_set]
    # Training is deterministic: the same captions give the same tokenizer.
    assert build_tokenizer("bpe", CAPTIONS, vocab_size=150).to_dict() == bpe.to_dict()


def test_bad_tokenizer_kinds():
    with pytest.raises(CaptionkitError, match="unknown tokenizer 'chars'"):
        build_tokenizer("chars", CAPTIONS)
    with pytest.raises(CaptionkitError, match="unknown tokenizer type 'chars'"):
        tokenizer_from_dict({"type": "chars"})
    with pytest.raises(CaptionkitError, match="unreadable BPE tokenizer"):
        tokenizer_from_dict({"type": "bpe", "tokenizer": "{not json"})
    with pytest.raises(CaptionkitError, match="a list of at most 1048576 words"):
        tokenizer_from_dict({"itos": ["<pad>"] * ((1 << 20) + 1)})
    with pytest.raises(CaptionkitError, match="does not start with the special tokens"):
        tokenizer_from_dict({"itos": ["a", "b"]})


def test_checkpoint_with_bpe_decodes_with_every_decoder(bpe, tmp_path):
    torch.manual_seed(0)
    model = create_model("show_tell", vocab_size=len(bpe), feature_dim=16, hidden_dim=32,
                         rnn="gru").eval()  # fmt: skip
    encoder = {"name": "tf_efficientnet_lite0", "weights": "default", "fingerprint": "abc"}
    save_checkpoint(tmp_path, model, "show_tell", bpe, encoder)
    loaded = load_checkpoint(tmp_path)
    assert isinstance(loaded.vocab, BpeTokenizer)
    assert [loaded.vocab.encode(c) for c in CAPTIONS] == [bpe.encode(c) for c in CAPTIONS]
    pooled = torch.randn(2, 16)
    decoders = [DecodingOptions(beam_size=1), DecodingOptions(beam_size=3, n_best=2),
                DecodingOptions(sample=True, num_samples=2, seed=3)]  # fmt: skip
    for options in decoders:
        # The reloaded model and tokenizer give the saved ones' hypotheses, piece for piece,
        # and each one's text is its pieces rejoined ("\u2581" starts a word).
        expected = decode(model, pooled, None, options)
        got = decode(loaded.model, pooled, None, options)
        assert [[h.tokens for h in hyps] for hyps in got] == [
            [h.tokens for h in hyps] for hyps in expected
        ]
        for hyps in got:
            for hyp in hyps:
                assert bpe.eos_id not in hyp.tokens
                text = loaded.vocab.decode(hyp.tokens)
                pieces = [bpe.hf.id_to_token(t) for t in hyp.tokens]
                assert text == "".join(pieces).replace("\u2581", " ").strip(), pieces


def test_detokenize_reattaches_clitics_for_display():
    from captionkit.data.ptb_tokenizer import detokenize

    assert detokenize("a dog 's ball and they do n't play") == "a dog's ball and they don't play"
    assert detokenize("the 's-shaped road") == "the 's-shaped road"
    assert tokenize(detokenize("a dog 's ball")) == ["a", "dog", "'s", "ball"]
