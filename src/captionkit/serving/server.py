"""`captionkit serve`: load a run and serve it with uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path

from captionkit.decoding import DecodingOptions
from captionkit.serving.settings import ServeSettings


def serve(run_dir: str | Path | list, host: str = "127.0.0.1", port: int = 8000,
          settings: ServeSettings | None = None, device: str = "cpu",
          options: DecodingOptions | None = None, rerank=None) -> None:  # fmt: skip
    """Load the run in `run_dir` (a list: an ensemble) once and answer HTTP requests until
    interrupted; `options`: as `create_app` takes them; `rerank` (`RerankOptions`): how requests
    re-rank when they do not say."""
    import uvicorn

    from captionkit.evaluation.captioner import Captioner
    from captionkit.serving.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    captioner = Captioner.load(run_dir, device, rerank=rerank)
    app = create_app(captioner, settings or ServeSettings(), options)
    # One process: the model is loaded once and the micro-batcher sees every request.
    uvicorn.run(app, host=host, port=port, log_level="info", workers=1)
