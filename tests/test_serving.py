"""The Python API and the HTTP service: every endpoint and error, and micro-batching, on a tiny
untrained attention model."""

import asyncio
import base64
import contextlib
import io
import os
import re
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from captionkit.decoding import DecodingOptions
from captionkit.errors import CaptionkitError
from captionkit.models.run_folder import load_checkpoint
from captionkit.serving import Captioner
from captionkit.serving.app import create_app
from captionkit.serving.batcher import MicroBatcher
from captionkit.serving.settings import ServeSettings

from conftest import ATTENDING_RUNS, CHECKER, SHAPE_WORDS

BEAM2 = DecodingOptions(beam_size=2)


@pytest.fixture(scope="module")
def captioner(tiny_attention_run, lite0):
    return Captioner(load_checkpoint(tiny_attention_run), lite0)


@pytest.fixture(scope="module", params=sorted(ATTENDING_RUNS))
def attending(request, lite0):
    """A captioner of each registered model that attends (tiny, untrained)."""
    return Captioner(load_checkpoint(request.getfixturevalue(ATTENDING_RUNS[request.param])), lite0)


def _png(size=(64, 48), seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _files(*contents: bytes, name="im{}.png"):
    return [("file", (name.format(i), data, "image/png")) for i, data in enumerate(contents)]


@pytest.fixture
def client(captioner):
    with TestClient(create_app(captioner, ServeSettings(max_wait_ms=1))) as client:
        yield client


# --- Python API ---------------------------------------------------------------------------------


def test_captioner_takes_paths_pil_images_and_arrays(captioner, tmp_path):
    import captionkit

    assert captionkit.Captioner is Captioner
    path = tmp_path / "a.png"
    path.write_bytes(_png())
    image = Image.open(path)
    by_path, by_pil, by_array = captioner.caption([path, image, np.asarray(image)], BEAM2)
    assert by_path == by_pil == by_array and len(by_path) == 1
    assert by_path[0].text and by_path[0].score < 0
    with pytest.raises(CaptionkitError, match=r"uint8 \[H, W\].*not float64 \[4, 4, 3\]"):
        captioner.caption([np.zeros((4, 4, 3))])
    with pytest.raises(CaptionkitError, match="nope.png: no such image file"):
        captioner.caption([tmp_path / "nope.png"])


def test_captioner_returns_n_best_and_attention(attending):
    captioner = attending
    image = Image.open(io.BytesIO(_png(seed=1)))
    (hyps,) = captioner.caption([image], DecodingOptions(n_best=3), attention=True)
    assert len(hyps) == 3 and [h.score for h in hyps] == sorted([h.score for h in hyps])[::-1]
    for h in hyps:
        assert " ".join(h.tokens) == h.text
        assert h.attention.shape == (len(h.tokens), 7, 7)  # lite0's grid at 224 px
        np.testing.assert_allclose(h.attention.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    (plain,) = captioner.caption([image], DecodingOptions(n_best=3))
    assert [(p.text, p.score) for p in plain] == [(h.text, pytest.approx(h.score)) for h in hyps]
    assert plain[0].attention is None and plain[0].tokens is None
    (attended,) = captioner.attend([image], options=None)
    assert " ".join(attended.tokens) == hyps[0].text  # the default: beam 3
    (attended,) = captioner.attend([image], options=DecodingOptions(beam_size=1))
    greedy = captioner.caption([image], DecodingOptions(beam_size=1))[0][0]
    assert " ".join(attended.tokens) == greedy.text and attended.image.shape == (224, 224, 3)


# --- endpoints ----------------------------------------------------------------------------------


def test_caption_endpoint_answers_each_image_as_the_api_does(client, captioner):
    pngs = [_png(seed=s) for s in range(3)]
    response = client.post("/caption", files=_files(*pngs), data={"beam_size": 2, "n_best": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    served = DecodingOptions(beam_size=2, n_best=2, bad_endings=True)  # serve's default
    expected = captioner.caption([Image.open(io.BytesIO(p)) for p in pngs], served)
    assert body["decoding"] == "beam 2 (no bad endings)" and len(body["images"]) == 3
    for i, (answer, hyps) in enumerate(zip(body["images"], expected)):
        assert answer["file"] == f"im{i}.png" and answer["caption"] == hyps[0].text
        assert answer["captions"] == [
            {"caption": h.text, "score": pytest.approx(h.score, abs=1e-4)} for h in hyps
        ]
        assert "attention" not in answer


def test_caption_endpoint_draws_attention_overlays(attending):
    with TestClient(create_app(attending, ServeSettings(max_wait_ms=1))) as client:
        response = client.post("/caption", files=_files(_png()), data={"attention": "true"})
    (answer,) = response.json()["images"]
    assert [a["token"] for a in answer["attention"]] == answer["caption"].split()
    for uri in [answer["image"]] + [a["overlay"] for a in answer["attention"]]:
        data = base64.b64decode(uri.removeprefix("data:image/jpeg;base64,"))
        assert Image.open(io.BytesIO(data)).size == (160, 160)


def test_health_model_page_and_docs(client, tiny_attention_run):
    client.post("/caption", files=_files(_png(), _png(seed=1)))
    health = client.get("/health").json()
    assert health == {"status": "ok", "in_flight": 0, "uploading": 0, "waiting": 0, "batches": 1,
                      "images": 2, "largest_batch": 2}  # fmt: skip
    model = client.get("/model").json()
    assert model["model"] == "attention" and model["encoder"]["name"] == "tf_efficientnet_lite0"
    assert model["vocabulary_size"] == 4 + len(SHAPE_WORDS) and model["attention"] is True
    assert model["metrics"] == {"BLEU-4": 0.125, "CIDEr": 0.5} and model["max_length"] == 8
    assert model["limits"]["max_files"] == ServeSettings.max_files
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text and "http" not in page.text
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/caption", "/health", "/model"}
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    # Offline: every asset of the docs page comes from this server, and it is there.
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text) + re.findall(r"url: '([^']+)'",
                                                                          docs.text)  # fmt: skip
    assert assets and not [a for a in assets if a.startswith(("http:", "https:", "//"))]
    for asset in assets:
        assert client.get(asset).status_code == 200, asset


# --- errors -------------------------------------------------------------------------------------


def _error(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]


def test_limits_give_413_and_422(captioner):
    settings = ServeSettings(max_upload_bytes=20_000, max_pixels=64 * 64, max_files=2)
    with TestClient(create_app(captioner, settings)) as client:
        big = _png(size=(120, 120))  # random pixels: ~43 kB of PNG
        error = _error(client.post("/caption", files=_files(big)), 413)
        assert error == "im0.png: file is over the limit of 20000 bytes"
        body = b"x" * (settings.max_request_bytes + 1)
        error = _error(client.post("/caption", content=body,
                                   headers={"content-type": "multipart/form-data; boundary=x"}),
                       413)  # fmt: skip
        assert error == f"request body is over the limit of {settings.max_request_bytes} bytes"
        chunks = (b"x" * 65536 for _ in range(settings.max_request_bytes // 65536 + 2))
        streamed = client.post(
            "/caption", content=chunks, headers={"content-type": "multipart/form-data; boundary=x"}
        )
        assert _error(streamed, 413).startswith("request body is over the limit")
        many = _files(*[_png(size=(8, 8))] * 3)
        assert _error(client.post("/caption", files=many), 422) == (
            "3 files is over the limit of 2 per request"
        )
        wide = _png(size=(100, 50))
        assert _error(client.post("/caption", files=_files(wide)), 422) == (
            "im0.png: image too large: 100x50 pixels is over the limit of 4096 (not decoded)"
        )
        assert client.get("/health").json()["batches"] == 0  # nothing reached the model


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"beam_size": "0"}, "beam_size: Input should be greater than or equal to 1"),
        ({"beam_size": "two"}, "beam_size: Input should be a valid integer"),
        ({"beam_size": "11"}, "beam_size 11 is over the limit of 10"),
        ({"beam_size": "2", "n_best": "3"}, "n_best 3 is more than beam_size 2"),
        ({"attention": "maybe"}, "attention: Input should be a valid boolean"),
    ],
)
def test_bad_options_give_422(client, form, message):
    error = _error(client.post("/caption", files=_files(_png()), data=form), 422)
    assert error.startswith(message)


def test_missing_file_gives_422(client):
    assert _error(client.post("/caption", data={"beam_size": "2"}), 422) == "file: Field required"


def test_corrupt_image_gives_400_naming_it(client):
    good, bad = _png(), _png()[:60]  # a PNG cut inside its header
    files = _files(good) + [("file", ("broken.png", bad, "image/png"))]
    error = _error(client.post("/caption", files=files), 400)
    assert error.startswith("broken.png: cannot read image (")
    text = [("file", ("notes.txt", b"not an image at all", "text/plain"))]
    error = _error(client.post("/caption", files=text), 400)
    assert error.startswith("notes.txt: cannot read image (UnidentifiedImageError: ")
    empty = [("file", ("empty.jpg", b"", "image/jpeg"))]
    assert _error(client.post("/caption", files=empty), 400) == "empty.jpg: empty file"
    assert client.post("/caption", files=_files(good)).status_code == 200  # still serving


class _Flaky:
    """A captioner whose model fails once, the way a bug would."""

    def __init__(self, captioner):
        self.inner, self.failed = captioner, False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def caption(self, images, **kwargs):
        if not self.failed:
            self.failed = True
            raise RuntimeError("CUDA out of memory (simulated)")
        return self.inner.caption(images, **kwargs)


def test_a_failing_model_gives_500_and_the_server_goes_on(captioner):
    with TestClient(create_app(_Flaky(captioner)), raise_server_exceptions=False) as client:
        error = _error(client.post("/caption", files=_files(_png())), 500)
        assert error == "internal error (RuntimeError: CUDA out of memory (simulated))"
        assert client.post("/caption", files=_files(_png())).status_code == 200


# --- micro-batching -----------------------------------------------------------------------------


class _Counting:
    """A captioner that records the size of every model batch."""

    def __init__(self, captioner):
        self.inner, self.batches, self.lock = captioner, [], threading.Lock()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def caption(self, images, **kwargs):
        with self.lock:
            self.batches.append(len(images))
        return self.inner.caption(images, **kwargs)


@pytest.mark.parametrize(("batch_size", "expected"), [(8, [8]), (1, [1] * 8)])
def test_concurrent_requests_share_a_model_batch(captioner, batch_size, expected):
    counting = _Counting(captioner)
    # A long wait that the 8th request cuts short: the batch runs as soon as it is full.
    settings = ServeSettings(batch_size=batch_size, max_wait_ms=5000)
    pngs = [_png(seed=s) for s in range(8)]
    with TestClient(create_app(counting, settings)) as client:

        def post(png):
            return client.post("/caption", files=_files(png), data={"beam_size": 2}).json()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, pngs))
    assert counting.batches == expected
    alone = captioner.caption([Image.open(io.BytesIO(p)) for p in pngs],
                              DecodingOptions(beam_size=2, bad_endings=True))  # fmt: skip
    assert [a["images"][0]["caption"] for a in answers] == [h[0].text for h in alone]


def test_batcher_groups_by_options_and_keeps_requests_whole():
    calls = []

    def run(items, key):
        calls.append((key, list(items)))
        return [f"{key}:{item}" for item in items]

    async def scenario():
        batcher = MicroBatcher(run, batch_size=4, max_wait_ms=50)
        await batcher.start()
        jobs = [([1, 2], "beam"), ([3], "greedy"), ([4, 5], "beam"), ([6], "beam")]
        results = await asyncio.gather(*(batcher.submit(items, key) for items, key in jobs))
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert results == [["beam:1", "beam:2"], ["greedy:3"], ["beam:4", "beam:5"], ["beam:6"]]
    # Batches of at most 4 images, in arrival order: [4, 5] would make 5, so it starts the next;
    # within a batch, one model call per set of options.
    assert calls == [("beam", [1, 2]), ("greedy", [3]), ("beam", [4, 5, 6])]


def test_an_api_key_guards_every_route_but_the_page_and_health(captioner, monkeypatch):
    decoded = []
    monkeypatch.setattr("captionkit.serving.app.decode_upload",
                        lambda *a: decoded.append(a) or Image.new("RGB", (8, 8)))  # fmt: skip
    app = create_app(captioner, ServeSettings(max_wait_ms=1), api_key="s3cret")
    good, bad = {"Authorization": "Bearer s3cret"}, {"Authorization": "Bearer s3cre"}
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert "captionkit" in client.get("/").text
        for headers in ({}, bad, {"Authorization": "s3cret"}):
            for method, path in (("get", "/model"), ("get", "/openapi.json"), ("get", "/docs")):
                response = getattr(client, method)(path, headers=headers)
                assert response.status_code == 401, (path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
                assert "API key" in response.json()["error"]
            refused = client.post("/caption", files=_files(_png()), headers=headers)
            assert refused.status_code == 401 and decoded == []  # refused before decoding
        assert client.get("/model", headers=good).json()["model"] == "attention"
        answer = client.post("/caption", files=_files(_png()), headers=good)
        assert answer.status_code == 200 and len(decoded) == 1
        assert "s3cret" not in client.get("/model", headers=good).text  # never shown
    with pytest.raises(CaptionkitError, match="the API key is empty"):
        create_app(captioner, api_key="")


def test_a_request_over_the_time_limit_gets_504_and_the_server_goes_on(captioner, monkeypatch):
    def slow(*args):
        time.sleep(1.0)
        return Image.new("RGB", (8, 8))

    monkeypatch.setattr("captionkit.serving.app.decode_upload", slow)
    with TestClient(create_app(captioner, ServeSettings(request_timeout_s=0.2))) as client:
        response = client.post("/caption", files=_files(_png()))
        assert response.status_code == 504
        assert response.json()["error"] == "the request took longer than 0.2 s and was stopped"
        assert client.get("/health").status_code == 200


def test_serving_beyond_loopback_without_a_key_is_warned_about():
    from captionkit.serving.server import exposure_warning

    assert exposure_warning("127.0.0.1", None) is None
    assert exposure_warning("localhost", None) is None
    assert exposure_warning("0.0.0.0", "k") is None
    assert "listening on 0.0.0.0 without an API key" in exposure_warning("0.0.0.0", None)


# --- the limits that protect the server, on a real server (uvicorn) ------------------------------


def _upload(url: str, length: int, first: bytes = b"") -> socket.socket:
    """A connection with a POST /caption announcing a body of `length` bytes, of which only
    `first` is sent."""
    host, port = url.removeprefix("http://").strip("/").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = (f"POST /caption HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n\r\n")  # fmt: skip
    sock.sendall(head.encode() + first)
    return sock


def _status_of(sock: socket.socket) -> tuple[int, str]:
    """The status and body of the answer on `sock` (a socket timeout if none comes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without an answer: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), body.decode()


def _wait_for(url: str, what: str, value: int) -> None:
    import httpx

    deadline = time.monotonic() + 10
    while httpx.get(f"{url}health").json()[what] != value:
        assert time.monotonic() < deadline, f"/health never showed {what} = {value}"
        time.sleep(0.02)


def test_a_stalled_or_trickling_body_gets_408_and_holds_nothing(captioner):
    import httpx

    settings = ServeSettings(max_wait_ms=1, body_timeout_s=0.5, min_body_rate=200)
    with _serving(create_app(captioner, settings)) as url:
        start = time.monotonic()
        stalled = _upload(url, 10_000, b"")  # headers, then not one byte of body
        part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        trickle = _upload(url, 10_000, part)

        def send_slowly():  # 100 bytes/s: never 0.5 s without a byte, but under the floor
            with contextlib.suppress(OSError):
                for _ in range(50):
                    trickle.sendall(b"x" * 10)
                    time.sleep(0.1)

        threading.Thread(target=send_slowly, daemon=True).start()
        answer = httpx.post(f"{url}caption", files=_files(_png()), timeout=10)
        assert answer.status_code == 200  # the slow bodies hold no worker
        status, body = _status_of(stalled)
        assert (status, body) == (408, '{"error": "request body timed out: nothing arrived '
                                       'for 0.5 s"}')  # fmt: skip
        status, body = _status_of(trickle)
        assert status == 408 and "under the floor of 200 bytes/s" in body
        assert time.monotonic() - start < 4
        stalled.close(), trickle.close()
        _wait_for(url, "in_flight", 0)
        assert httpx.get(f"{url}health").json()["uploading"] == 0


def test_uploads_over_the_limit_get_503_with_retry_after_at_once(captioner):
    import httpx

    settings = ServeSettings(max_wait_ms=1, max_uploads=2, retry_after_s=3)
    with _serving(create_app(captioner, settings)) as url:
        slow = [_upload(url, 10_000, b"--b\r\n") for _ in range(2)]
        _wait_for(url, "uploading", 2)
        start = time.monotonic()
        refused = httpx.post(f"{url}caption", files=_files(_png()), timeout=10)
        assert time.monotonic() - start < 2 and refused.headers["retry-after"] == "3"
        assert _error(refused, 503) == (
            "server busy: 2 uploads are already in progress, try again in 3 s"
        )
        slow[0].close()  # a client gone mid-upload frees its place
        _wait_for(url, "uploading", 1)
        assert httpx.post(f"{url}caption", files=_files(_png()), timeout=10).status_code == 200
        slow[1].close()
        _wait_for(url, "in_flight", 0)


class _Held:
    """A captioner whose model waits for `release` before each batch."""

    def __init__(self, captioner):
        self.inner, self.release = captioner, threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def caption(self, images, **kwargs):
        assert self.release.wait(30)
        return self.inner.caption(images, **kwargs)


def test_a_full_server_answers_503_with_retry_after_at_once(captioner):
    import httpx

    held = _Held(captioner)
    settings = ServeSettings(max_wait_ms=1, max_queue=2)
    with _serving(create_app(held, settings)) as url, ThreadPoolExecutor(2) as pool:

        def post():
            return httpx.post(f"{url}caption", files=_files(_png()), timeout=30)

        first = [pool.submit(post) for _ in range(2)]
        _wait_for(url, "in_flight", 2)
        start = time.monotonic()
        refused = post()
        assert time.monotonic() - start < 2 and refused.headers["retry-after"] == "2"
        assert _error(refused, 503) == (
            "server busy: 2 requests are already in the server, try again in 2 s"
        )
        held.release.set()
        assert [f.result().status_code for f in first] == [200, 200]
        assert post().status_code == 200


# --- the web page, in headless Chromium ---------------------------------------------------------


@contextlib.contextmanager
def _serving(app):
    """`app` served by uvicorn on a free loopback port, in a thread; yields its URL."""
    import uvicorn

    # log_config=None: uvicorn's logging.config.dictConfig would close every handler there is,
    # pytest's log capture's included.
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _chrome(browser: str, driver_path: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1000,900"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    checker = CHECKER.removeprefix("<script>").removesuffix("</script>")
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": checker})
    return driver


@pytest.mark.slow
def test_web_page_captions_an_upload_in_headless_chromium(chromium, chromedriver, captioner,
                                                          tmp_path):  # fmt: skip
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    image = Image.new("RGB", (200, 160), "white")
    ImageDraw.Draw(image).ellipse((30, 20, 130, 120), fill="red")
    image.save(tmp_path / "red circle.png")
    (expected,) = captioner.caption([image], DecodingOptions(n_best=3, bad_endings=True))
    with _serving(create_app(captioner)) as url:
        driver = _chrome(chromium, chromedriver)
        try:
            wait = WebDriverWait(driver, 30)
            driver.get(url)
            wait.until(lambda d: "vocabulary" not in d.title and d.title.startswith("CHECKED"))
            assert driver.title == "CHECKED 0 images; []"
            wait.until(lambda d: "tokens" in d.find_element(By.ID, "model").text)
            driver.find_element(By.ID, "file").send_keys(str(tmp_path / "red circle.png"))
            wait.until(
                lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-captioned")
            )
            items = driver.find_elements(By.CSS_SELECTOR, "#captions li")
            assert [li.text for li in items] == [f"{expected[0].text} {expected[0].score:.2f}"]
            tiles = driver.find_elements(By.CSS_SELECTOR, "#attention .tile")
            assert [t.text for t in tiles] == ["(image)", *expected[0].text.split()]
            Select(driver.find_element(By.ID, "nbest")).select_by_visible_text("3")
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#captions li")) == 3)
            texts = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#captions li")]
            assert texts == [f"{h.text} {h.score:.2f}" for h in expected]
            broken = (
                "return [...document.images].filter(i => !i.complete || !i.naturalWidth).length"
            )
            assert driver.execute_script(broken) == 0
            assert driver.execute_script("return problems") == []
            screenshot = tmp_path / "page.png"
            driver.save_screenshot(str(screenshot))
        finally:
            driver.quit()
    shot = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.float32)
    # The red circle shows in the preview and in the tiles: the page really drew the images.
    red = (shot[..., 0] > 200) & (shot[..., 1] < 80) & (shot[..., 2] < 80)
    assert red.sum() > 2000, "no red circle in the screenshot"
    if os.environ.get("CAPTIONKIT_SCREENSHOTS"):
        shutil.copy(screenshot, Path(os.environ["CAPTIONKIT_SCREENSHOTS"]) / "serve_page.png")


@pytest.mark.slow
def test_web_page_captions_with_an_ensemble_and_reranking(chromium, chromedriver, indexed_run,
                                                          tiny_updown_run, tmp_path):  # fmt: skip
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from captionkit.reranking import RerankOptions

    # `captionkit serve --checkpoint A --checkpoint B --rerank consensus`: the first run's index
    rerank = RerankOptions("consensus", candidates=3, k=4)
    captioner = Captioner.load([indexed_run, tiny_updown_run], rerank=rerank)
    Image.new("RGB", (120, 90), "navy").save(tmp_path / "blue.png")
    (expected,) = captioner.caption([Image.open(tmp_path / "blue.png").convert("RGB")],
                                    DecodingOptions(bad_endings=True))  # fmt: skip
    with _serving(create_app(captioner)) as url:
        driver = _chrome(chromium, chromedriver)
        try:
            wait = WebDriverWait(driver, 30)
            driver.get(url)
            wait.until(lambda d: "tokens" in d.find_element(By.ID, "model").text)
            assert "ensemble of 2 runs" in driver.find_element(By.ID, "model").text
            driver.find_element(By.ID, "file").send_keys(str(tmp_path / "blue.png"))
            wait.until(
                lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-captioned")
            )
            items = driver.find_elements(By.CSS_SELECTOR, "#captions li")
            assert [li.text for li in items] == [f"{expected[0].text} {expected[0].score:.2f}"]
            status = driver.find_element(By.ID, "status").text
            assert "rerank consensus (3 candidates, weight 0.3, k=4)" in status
            assert driver.execute_script("return problems") == []
        finally:
            driver.quit()


@pytest.mark.slow
def test_web_page_asks_for_the_api_key_once(chromium, chromedriver, captioner, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    (tmp_path / "a.png").write_bytes(_png((96, 80)))
    (expected,) = captioner.caption([Image.open(tmp_path / "a.png")],
                                    DecodingOptions(bad_endings=True))  # fmt: skip
    with _serving(create_app(captioner, api_key="s3cret")) as url:
        driver = _chrome(chromium, chromedriver)
        try:
            wait = WebDriverWait(driver, 30)
            driver.get(url)
            wait.until(lambda d: d.find_element(By.ID, "key-box").is_displayed())
            assert "API key needed" in driver.find_element(By.ID, "model").text
            driver.find_element(By.ID, "key").send_keys("s3cret")
            driver.find_element(By.CSS_SELECTOR, "#key-box button").click()
            wait.until(lambda d: "tokens" in d.find_element(By.ID, "model").text)
            assert not driver.find_element(By.ID, "key-box").is_displayed()
            driver.find_element(By.ID, "file").send_keys(str(tmp_path / "a.png"))
            wait.until(
                lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-captioned")
            )
            first = driver.find_element(By.CSS_SELECTOR, "#captions li").text
            assert first == f"{expected[0].text} {expected[0].score:.2f}"
            driver.refresh()  # the key is kept for the tab: no second question
            wait.until(lambda d: "tokens" in d.find_element(By.ID, "model").text)
            assert not driver.find_element(By.ID, "key-box").is_displayed()
            assert driver.execute_script("return problems") == []
        finally:
            driver.quit()


def test_serve_command_passes_its_options(monkeypatch, tiny_attention_run):
    from captionkit.cli import main

    calls, keys, modes = [], [], []

    def fake_serve(*args, api_key, quantize):
        calls.append(args)
        keys.append(api_key)
        modes.append(quantize)

    monkeypatch.setattr("captionkit.serving.server.serve", fake_serve)
    argv = ["serve", "--checkpoint", str(tiny_attention_run), "--port", "8123", "--batch-size",
            "4", "--max-wait-ms", "0", "--max-upload-mb", "0.5", "--max-files", "2",
            "--max-queue", "8", "--max-uploads", "4", "--body-timeout", "5", "--min-body-rate",
            "100", "--retry-after", "3"]  # fmt: skip
    monkeypatch.delenv("CAPTIONKIT_API_KEY", raising=False)
    assert main(argv) == 0
    assert main([*argv, "--api-key", "k1"]) == 0
    monkeypatch.setenv("CAPTIONKIT_API_KEY", "k2")
    assert main(argv) == 0
    assert keys == [None, "k1", "k2"] and modes == ["none"] * 3
    assert main([*argv, "--quantize", "int8"]) == 0 and modes[-1] == "int8"
    assert main([*argv, "--api-key", " "]) == 1
    del calls[1:]
    ((run_dir, host, port, settings, device, options, rerank),) = calls
    assert (run_dir, host, port, device) == (tiny_attention_run, "127.0.0.1", 8123, "cpu")
    assert options.bad_endings and not options.allow_unk
    assert rerank.method == "auto"  # serve's default: consensus where the run can
    assert settings == ServeSettings(max_upload_bytes=512 * 1024, max_files=2, batch_size=4,
                                     max_wait_ms=0, max_queue=8, max_uploads=4, body_timeout_s=5,
                                     min_body_rate=100, retry_after_s=3)  # fmt: skip
    assert options == DecodingOptions(bad_endings=True)  # serve's default
    calls.clear()
    argv = ["serve", "--checkpoint", str(tiny_attention_run), "--checkpoint",
            str(tiny_attention_run), "--allow-unk", "--no-bad-endings"]  # fmt: skip
    assert main(argv) == 0
    ((run_dir, *_, options, _),) = calls
    assert run_dir == [tiny_attention_run] * 2 and options == DecodingOptions(allow_unk=True)
