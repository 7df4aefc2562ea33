"""Transitional alias of `captionkit.data.dataset_report`, only for `cli.py` (edited on another
branch): once `cli.py` imports `captionkit.data.dataset_report`, delete this file."""

from captionkit.data.dataset_report import format_report, prepare_report

__all__ = ["format_report", "prepare_report"]
