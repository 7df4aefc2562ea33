"""Profile one training step of an attention decoder: where the time of a step goes.

    .venv/bin/python bench/profile_attention.py [--model attention|updown] [--batch 64]

Random features and captions of the recipe's shapes (a 7x7 grid of 1280-d EfficientNet-Lite0
features, 12 tokens, a 633-word vocabulary as in flickr8k-mini), the model's default settings (the
default recipe's), Adam; the mean step time over 10 steps after 3 warm-up ones, then
`torch.profiler`'s table of the operators by their own CPU time over 3 steps.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from captionkit.models import create_model
from captionkit.models.attention import attention_regularizer
from captionkit.training.module import caption_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="attention", choices=["attention", "updown"])
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    cells, dim, vocab, length = 49, 1280, 633, 13
    model = create_model(args.model, vocab_size=vocab, feature_dim=dim)
    optimizer = torch.optim.Adam(model.parameters(), 5e-4)
    pooled, grid = torch.randn(args.batch, dim), torch.randn(args.batch, cells, dim)
    tokens = torch.randint(4, vocab, (args.batch, length))
    tokens[:, 0] = 1  # <bos>
    regularized = model.attends and model.config.alpha_c > 0  # as the training module decides

    def step() -> None:
        if regularized:
            logits, alpha = model(pooled, grid, tokens[:, :-1], return_attention=True)
            loss = caption_loss(logits, tokens[:, 1:]) + attention_regularizer(
                alpha, tokens[:, :-1], model.config.alpha_c
            )
        else:
            loss = caption_loss(model(pooled, grid, tokens[:, :-1]), tokens[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    start, n = time.perf_counter(), 10
    for _ in range(n):
        step()
    seconds = (time.perf_counter() - start) / n
    print(f"{args.model}, batch {args.batch}: {seconds * 1000:.0f} ms a step, "
          f"{args.batch / seconds:.0f} captions/s, {torch.get_num_threads()} threads")  # fmt: skip
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
