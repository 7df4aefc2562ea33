"""`captionkit serve`: load a run and serve it with uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path

from captionkit.serving.settings import ServeSettings


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000,
          settings: ServeSettings | None = None, device: str = "cpu",
          rerank=None) -> None:  # fmt: skip
    """Load the run in `run_dir` once and answer HTTP requests until interrupted; `rerank`
    (`RerankOptions`): how requests re-rank when they do not say."""
    import uvicorn

    from captionkit.serving.app import create_app
    from captionkit.serving.captioner import Captioner

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    captioner = Captioner.load(run_dir, device, rerank=rerank)
    app = create_app(captioner, settings or ServeSettings())
    # One process: the model is loaded once and the micro-batcher sees every request.
    uvicorn.run(app, host=host, port=port, log_level="info", workers=1)
