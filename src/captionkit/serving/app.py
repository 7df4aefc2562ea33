"""The HTTP service: `create_app(captioner, settings)` builds the FastAPI app that
`captionkit serve` runs with uvicorn.

Endpoints: `POST /caption` (images in the multipart field `file`, repeatable), `GET /health`,
`GET /model`, the web page at `/`, and FastAPI's OpenAPI schema and docs. With an API key, every
route but the page and `/health` needs `Authorization: Bearer KEY`. Every error is JSON
`{"error": "one line"}`; no request can stop the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib import resources
from typing import Annotated, NamedTuple

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from captionkit.decoding import DecodingOptions
from captionkit.errors import CaptionkitError
from captionkit.evaluation.captioner import Caption, Captioner
from captionkit.reporting.compare import summarize_run
from captionkit.reporting.pictures import data_uri, heat_overlay
from captionkit.reranking import RERANKERS, RerankOptions
from captionkit.serving.batcher import MicroBatcher, QueueFull
from captionkit.serving.guard import Load, RequestGuard, server_busy
from captionkit.serving.settings import ServeSettings
from captionkit.serving.uploads import ApiError, decode_upload, read_uploads, upload_name

log = logging.getLogger("captionkit.serving")

# Each word's attention tile on the page, in pixels (the report's size).
OVERLAY_SIZE = 160


class CaptionOptions(NamedTuple):
    """The decoding options of a request; requests with equal ones share model batches."""

    beam_size: int
    n_best: int
    attention: bool
    rerank: str = "auto"


def create_app(
    captioner: Captioner,
    settings: ServeSettings | None = None,
    options: DecodingOptions | None = None,
    api_key: str | None = None,
) -> FastAPI:
    """The service over one loaded `captioner`, with `settings`' limits and micro-batching;
    `options` (default: no bad endings, else `DecodingOptions()`) are every request's decoding
    options but `beam_size` and `n_best`, which a request sets. With `api_key`, requests to any
    route but the page and `/health` must carry it (`Authorization: Bearer KEY`; else 401)."""
    settings = settings or ServeSettings()
    base = options or DecodingOptions(bad_endings=True)

    def run(images: list, key: CaptionOptions) -> list[list[Caption]]:
        return captioner.caption(
            images,
            options=_request_options(base, key),
            attention=key.attention,
            rerank=_rerank(captioner, key),
        )

    batcher = MicroBatcher(run, settings.batch_size, settings.max_wait_ms, settings.max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="captionkit",
        summary="Caption images with a trained captionkit run.",
        lifespan=lifespan,
        docs_url=None,
    )
    _add_offline_docs(app)
    app.state.captioner, app.state.settings, app.state.batcher = captioner, settings, batcher
    app.state.load = Load()
    # Added first, so it runs last: a request without the API key is refused before it counts.
    app.add_middleware(RequestGuard, settings=settings, load=app.state.load)
    if settings.request_timeout_s:
        _limit_time(app, settings.request_timeout_s)
    if api_key is not None:
        _require_api_key(app, api_key)
    _add_error_handlers(app)
    _add_routes(app, captioner, settings, batcher, model_info(captioner, settings), base)
    return app


def _limit_time(app: FastAPI, seconds: float) -> None:
    @app.middleware("http")  # the upload and the captioning both count: a slow client too
    async def time_limit(request: Request, call_next):
        try:
            return await asyncio.wait_for(call_next(request), seconds)
        except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
            message = f"the request took longer than {seconds:g} s and was stopped"
            return JSONResponse({"error": message}, status_code=504)


DOCS_ASSETS = "/docs-assets"


def _add_offline_docs(app: FastAPI) -> None:
    """`/docs`: Swagger UI from the `swagger-ui-bundle` package, served here (FastAPI's own page
    loads it from a CDN, which a machine without internet cannot reach)."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title="captionkit API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )


OPEN_PATHS = frozenset({"/", "/health"})
"""What answers without the API key: the web page (it asks for the key) and the health check."""


def _require_api_key(app: FastAPI, api_key: str) -> None:
    if not api_key:
        raise CaptionkitError("the API key is empty")
    expected = f"Bearer {api_key}".encode()

    @app.middleware("http")  # runs before the body is read: a refused upload costs nothing
    async def check_key(request: Request, call_next):
        if request.url.path in OPEN_PATHS:
            return await call_next(request)
        given = request.headers.get("authorization", "").encode("latin-1")
        if not hmac.compare_digest(given, expected):  # constant time: no timing oracle
            message = "missing or wrong API key (send the header 'Authorization: Bearer KEY')"
            return JSONResponse(
                {"error": message}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        return await call_next(request)


def _add_routes(
    app: FastAPI,
    captioner: Captioner,
    settings: ServeSettings,
    batcher: MicroBatcher,
    info: dict,
    base: DecodingOptions,
) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return resources.files("captionkit.serving").joinpath("static/index.html").read_text()

    @app.get("/health")
    def health() -> dict:
        """Whether the service is up, with its queue and batching figures."""
        stats, load = batcher.stats, app.state.load
        return {
            "status": "ok",
            "in_flight": load.in_flight,
            "uploading": load.uploading,
            "waiting": batcher.waiting,
            "batches": stats.batches,
            "images": stats.items,
            "largest_batch": stats.largest,
        }

    @app.get("/model")
    def model() -> dict:
        """The model served: name, encoder, vocabulary size, metrics, and the request limits."""
        return info

    @app.post("/caption")
    async def caption(
        file: Annotated[list[UploadFile], File(description="Image files (repeat the field).")],
        beam_size: Annotated[int, Form(ge=1, description="1: greedy decoding.")] = 3,
        n_best: Annotated[int, Form(ge=1, description="Captions per image (<= beam_size).")] = 1,
        attention: Annotated[
            bool, Form(description="Per-word attention overlays (attention models).")
        ] = False,
        rerank: Annotated[
            str | None,
            Form(description="auto, none, consensus or mbr (default: serve --rerank)."),
        ] = None,
    ) -> dict:
        """Caption the uploaded images: for each, the best `caption` and its `score` (total
        log-probability), the `captions` n-best list, and with `attention` the tokens, each
        with a JPEG data URI of where the model looked."""
        key = _options(
            beam_size,
            n_best,
            attention and captioner.attends,
            settings,
            rerank or captioner.rerank.method,
        )
        # asked to re-rank a run without a neighbour index: 400 before any decoding
        reranker = await run_in_threadpool(
            captioner.reranker, _rerank(captioner, key), _request_options(base, key)
        )
        contents = await read_uploads(file, settings)
        names = [upload_name(f, i) for i, f in enumerate(file)]
        images = [
            await run_in_threadpool(decode_upload, name, data, settings.max_pixels)
            for name, data in zip(names, contents)
        ]
        try:
            results = await batcher.submit(images, key)
        except QueueFull as e:  # only where the guard's max_queue was not reached first
            busy = server_busy(settings, str(e))
            raise ApiError(busy.status, busy.message, busy.headers) from None
        answers = [
            await run_in_threadpool(_answer, captioner, name, image, hyps)
            for name, image, hyps in zip(names, images, results)
        ]
        decoding = reranker.options.describe_decoding(_request_options(base, key))
        return {"decoding": decoding, "images": answers}


def _request_options(base: DecodingOptions, key: CaptionOptions) -> DecodingOptions:
    return dataclasses.replace(base, beam_size=key.beam_size, n_best=key.n_best)


def _rerank(captioner: Captioner, key: CaptionOptions) -> RerankOptions:
    """The server's re-ranking settings with the request's method."""
    return dataclasses.replace(captioner.rerank, method=key.rerank)


def _options(
    beam_size: int, n_best: int, attention: bool, settings: ServeSettings, rerank: str = "none"
) -> CaptionOptions:
    if rerank not in RERANKERS:
        raise ApiError(422, f"rerank must be one of {', '.join(RERANKERS)}, not {rerank!r}")
    if beam_size > settings.max_beam_size:
        raise ApiError(422, f"beam_size {beam_size} is over the limit of {settings.max_beam_size}")
    if n_best > beam_size:
        raise ApiError(422, f"n_best {n_best} is more than beam_size {beam_size}")
    return CaptionOptions(beam_size, n_best, attention, rerank)


def _answer(captioner: Captioner, name: str, image, hyps: list[Caption]) -> dict:
    best = hyps[0]
    captions = [{"caption": h.text, "score": round(h.score, 4)} for h in hyps]
    answer = {
        "file": name,
        "caption": best.text,
        "score": captions[0]["score"],
        "captions": captions,
    }
    if best.attention is not None:
        seen = captioner.seen(image)  # [H, W, 3] as the encoder saw it
        answer["image"] = data_uri(_resized(seen))
        answer["attention"] = [
            {"token": token, "overlay": data_uri(heat_overlay(seen, weights, OVERLAY_SIZE))}
            for token, weights in zip(best.tokens, best.attention)
        ]
    return answer


def _resized(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels).resize((OVERLAY_SIZE, OVERLAY_SIZE))


def model_info(captioner: Captioner, settings: ServeSettings) -> dict:
    """What `GET /model` says: the run's model, encoder, vocabulary and metrics."""
    trained = captioner.trained
    metrics, best_val = None, trained.config.get("metrics") or None
    if trained.run_dir is not None:
        try:
            summary = summarize_run(trained.run_dir)
            metrics = summary.evaluation and summary.evaluation.get("metrics")
            best_val = summary.best_val or best_val
        except CaptionkitError as e:  # a damaged eval file only loses the metrics
            log.warning("no metrics for /model: %s", e)
    return {
        "model": trained.config["model"]["name"],
        "model_config": trained.config["model"]["config"],
        "encoder": {k: trained.encoder.get(k) for k in ("name", "weights", "finetuned")},
        "vocabulary_size": len(trained.tokenizer),
        "vocabulary_type": trained.config["vocabulary"].get("type", "word"),
        "attention": captioner.attends,
        "runs": [str(t.run_dir) for t in captioner.members if t.run_dir],  # several: ensemble
        "max_length": trained.data_setting("max_length"),
        "metrics": metrics,
        "best_val": best_val,
        "limits": asdict(settings),
    }


def _add_error_handlers(app: FastAPI) -> None:
    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return error(e.status, e.message, e.headers)

    @app.exception_handler(CaptionkitError)
    async def captionkit_error(request: Request, e: CaptionkitError):
        return error(400, str(e))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        problems = [
            f"{'.'.join(str(p) for p in d['loc'][1:]) or d['loc'][0]}: {d['msg']}"
            for d in e.errors()
        ]
        detail = [{k: d[k] for k in ("loc", "msg", "type")} for d in e.errors()]
        return JSONResponse({"error": "; ".join(problems), "detail": detail}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception):  # a bug: logged, the server goes on
        log.exception("request failed")
        return error(500, f"internal error ({type(e).__name__}: {e})")
