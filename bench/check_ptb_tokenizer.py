"""Check: captionkit's Python tokenizer against pycocoevalcap's PTB tokenizer (Java), caption by
caption, on every reference of a dataset.

    .venv/bin/python bench/check_ptb_tokenizer.py --data ../shared/data/flickr8k-mini

Prints how many captions get other tokens, and the first few differences. Bracket tokens
(-lrb- ...) are the one deliberate difference of `captionkit.data.tokenize` (it drops them);
the metrics' Java-free path (`evaluation.metrics.python_ptb_tokenize`) keeps them as PTB does.
"""

from __future__ import annotations

import argparse
import json

from captionkit.data import load_dataset
from captionkit.metrics.coco_metrics import python_ptb_tokenize
from captionkit.metrics.java_ptb_tokenizer import ptb_tokenize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/flickr8k-mini")
    parser.add_argument("--show", type=int, default=10)
    args = parser.parse_args()
    refs = {r.filename: list(r.captions) for r in load_dataset(args.data).records}
    java, python = ptb_tokenize(refs), python_ptb_tokenize(refs)
    diffs = [(c, j, p) for k in refs for c, j, p in zip(refs[k], java[k], python[k]) if j != p]
    total = sum(map(len, refs.values()))
    print(json.dumps({"captions": total, "different": len(diffs)}))
    for caption, j, p in diffs[: args.show]:
        print(f"{caption!r}\n  java:   {j}\n  python: {p}")


if __name__ == "__main__":
    main()
