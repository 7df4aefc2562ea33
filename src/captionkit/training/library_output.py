"""Lightning's and torch's output that is not the user's business, kept out of `train`'s: the
advertisements Lightning logs ("💡 Tip: ... try installing litlogger"), deprecation warnings the
libraries raise about their use of each other (nothing a captionkit user can change), and
Lightning's advice about a setting that captionkit fixes (`log_every_n_steps`)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# Where deprecation warnings come from when a library, not the user's code, uses a deprecated API.
LIBRARIES = r"(lightning|lightning_fabric|lightning_utilities|torch|torchmetrics)(\.|$)"
# The loggers of Lightning's `rank_zero_info` (the Fabric's and the Trainer's module each set it).
RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


def _not_an_advertisement(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip:")


@contextmanager
def library_output_filtered() -> Iterator[None]:
    """Within it, the libraries' advertisements and deprecation warnings are not shown."""
    loggers = [logging.getLogger(name) for name in RANK_ZERO_LOGGERS]
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category, module=LIBRARIES)
        # train.py sets the interval; too few batches for it only means fewer points in the logs.
        warnings.filterwarnings("ignore", message=r"The number of training batches .* logging")
        for logger in loggers:
            logger.addFilter(_not_an_advertisement)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(_not_an_advertisement)
