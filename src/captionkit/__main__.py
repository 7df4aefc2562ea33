"""`python -m captionkit ...`: the CLI (also what `torchrun -m captionkit` and DDP launch)."""

from captionkit.cli import entry_point

entry_point()
