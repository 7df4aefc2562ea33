"""`captionkit serve`: load a run and serve it with uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path

from captionkit.decoding import DecodingOptions
from captionkit.serving.settings import ServeSettings

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning for a service that other machines can reach without a key, else None."""
    if api_key or host in LOOPBACK or host.startswith("127."):
        return None
    return (
        f"listening on {host} without an API key: anyone who can reach this port can use "
        "the model (give --api-key KEY or set CAPTIONKIT_API_KEY)"
    )


def serve(
    run_dir: str | Path | list,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    device: str = "cpu",
    options: DecodingOptions | None = None,
    rerank=None,
    api_key: str | None = None,
    quantize: str = "none",
) -> None:
    """Load the run in `run_dir` (a list: an ensemble) once and answer HTTP requests until
    interrupted; `options`: as `create_app` takes them; `rerank` (`RerankOptions`): how requests
    re-rank when they do not say; `api_key`: the key requests must carry (see `create_app`);
    `quantize`: as `Captioner.load` takes it."""
    import uvicorn

    from captionkit.evaluation.captioner import Captioner
    from captionkit.serving.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    warning = exposure_warning(host, api_key)
    if warning:
        logging.getLogger("captionkit.serving").warning(warning)
    captioner = Captioner.load(run_dir, device, rerank=rerank, quantize=quantize)
    app = create_app(captioner, settings or ServeSettings(), options, api_key)
    # One process: the model is loaded once and the micro-batcher sees every request.
    uvicorn.run(app, host=host, port=port, log_level="info", workers=1)
