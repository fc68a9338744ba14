"""The bad-input corpus: one case per file or reference, each sent between two good tasks of one
/predict batch. Each case's own outcome is asserted exactly (its mask's size, or its error), and the
good tasks beside it still get their masks. Real app, tiny model, a real HTTP server for the URLs."""

from __future__ import annotations

import io
import resource
import struct
import time
import zlib
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from backend.rle import rle_to_mask
from backend.server import create_app
from fake_http import FakeHTTPServer
from seediff_core.limits import MAX_LABELS
from seediff_core.scenes import make_scene, render
from test_backend_server import _predict, _ready, _settings, _url

W, H = 120, 90  # not square, so a wrong orientation shows in the mask's size


def _scene(width=W, height=H) -> Image.Image:
    return Image.fromarray(render(make_scene(5), 128).image).resize((width, height))


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(_scene(), "JPEG", exif=exif)


def _huge_png(side: int = 30000) -> bytes:
    """A valid 1-bit side x side PNG of ~100 KB that would decode to side**2 pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer, row = zlib.compressobj(9), b"\0" * (1 + side // 8)
    body = b"".join(packer.compress(row * 1000) for _ in range(side // 1000)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _gif() -> bytes:
    first, second = _scene(), Image.new("RGB", (W, H), (20, 20, 20))
    return _encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


def _palette_with_transparency() -> bytes:
    image = _scene().convert("P", palette=Image.ADAPTIVE, colors=16)
    return _encode(image, "PNG", transparency=0)


def _sixteen_bit() -> bytes:
    grey = np.asarray(_scene().convert("L"), dtype=np.uint16) * 257
    image = Image.fromarray(grey)
    assert image.mode.startswith("I;16")
    return _encode(image, "PNG")


FILES = {
    "truncated.jpg": lambda: _encode(_scene(), "JPEG")[:600],
    "empty.png": lambda: b"",
    "text.png": lambda: b"this is not an image\n" * 20,
    "cmyk.jpg": lambda: _encode(_scene().convert("CMYK"), "JPEG"),
    "sixteen-bit.png": _sixteen_bit,
    "palette-transparent.png": _palette_with_transparency,
    "animated.gif": _gif,
    "huge.png": _huge_png,
    **{f"exif-{n}.jpg": (lambda n=n: _exif_jpeg(n)) for n in range(1, 9)},
}

OK, SWAPPED = (W, H), (H, W)
CASES = {
    # case: (reference in the task, expected: (width, height) of the mask, or a regex of the task's error)
    "truncated JPEG": ("/data/upload/1/truncated.jpg", "cannot read image"),
    "0-byte file": ("/data/upload/1/empty.png", "cannot read image"),
    "text named .png": ("/data/upload/1/text.png", "cannot read image"),
    "CMYK JPEG": ("/data/upload/1/cmyk.jpg", OK),
    "16-bit PNG": ("/data/upload/1/sixteen-bit.png", OK),
    "palette PNG with transparency": ("/data/upload/1/palette-transparent.png", OK),
    "animated GIF (first frame)": ("/data/upload/1/animated.gif", OK),
    **{f"EXIF orientation {n}": (f"/data/upload/1/exif-{n}.jpg", SWAPPED if n >= 5 else OK) for n in range(1, 9)},
    "30000x30000 PNG": ("/data/upload/1/huge.png", "exceeds the limit of 80000000 pixels"),
    "404": ("/data/upload/1/missing.png", "HTTP 404"),
    "401": ("/status/401", "HTTP 401"),
    "403": ("/status/403", "HTTP 403"),
    "server never answers": ("/hang", "Timeout"),
    "endless body": ("/endless", "more than the limit of 2097152 bytes"),
    "redirect to 127.0.0.1": ("/redirect?to=http://127.0.0.1:9/a.png", "redirect to '127.0.0.1:9' refused"),
    "redirect to 10.x": ("/redirect?to=http://10.1.2.3/a.png", "redirect to '10.1.2.3' refused"),
    "redirect to 169.254.169.254": ("/redirect?to=http://169.254.169.254/latest/meta-data/", "redirect to '169.254.169.254' refused"),
    "redirect to [::1]": ("/redirect?to=http://[::1]:9/a.png", r"redirect to '\[::1\]:9' refused"),
    "redirect to file://": ("/redirect?to=file:///etc/passwd", "redirect to a non-http URL refused"),
    "redirect to another host": ("/to-other", OK),
    "local files ../": ("/data/local-files/?d=../secret.png", "leaves LOCAL_FILES_DOCUMENT_ROOT"),
    "local files %2e%2e": ("/data/local-files/?d=%2e%2e/secret.png", "leaves LOCAL_FILES_DOCUMENT_ROOT"),
    "local files absolute path": ("/data/local-files/?d=/etc/hostname", "leaves LOCAL_FILES_DOCUMENT_ROOT"),
    "local files symlink out of the root": ("/data/local-files/?d=link/secret.png", "leaves LOCAL_FILES_DOCUMENT_ROOT"),
    "local file inside the root": ("/data/local-files/?d=ds/cmyk.jpg", OK),
    "not a string": (12345, "not a string"),
    "unsupported scheme": ("ftp://example.com/a.png", "unsupported URL scheme"),
}


def _endless(wfile):
    while True:
        wfile.write(b"\xff" * 65536)


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    files = {name: make() for name, make in FILES.items()}
    other = FakeHTTPServer(lambda path, headers: (200, {}, files["cmyk.jpg"]) if path == "/img.jpg" else (404, {}, b""))

    def routes(path, headers):
        if headers.get("Authorization") != "Token legacy-key":
            return 401, {}, b""
        if path.startswith("/data/upload/1/"):
            name = path.rsplit("/", 1)[-1]
            return (200, {"Content-Length": str(len(files[name]))}, files[name]) if name in files else (404, {}, b"")
        if path.startswith("/status/"):
            return int(path.rsplit("/", 1)[-1]), {}, b""
        if path == "/hang":
            time.sleep(3)
            return 200, {}, b""
        if path == "/endless":
            return 200, {}, _endless
        if path.startswith("/redirect?to="):
            return 302, {"Location": unquote(path.split("=", 1)[1])}, b""
        if path == "/to-other":
            return 302, {"Location": other.url.replace("127.0.0.1", "localhost") + "/img.jpg"}, b""
        return 404, {}, b""

    ls = FakeHTTPServer(routes)
    (root / "files" / "ds").mkdir(parents=True)
    (root / "files" / "ds" / "cmyk.jpg").write_bytes(files["cmyk.jpg"])
    (root / "secret.png").write_bytes(files["cmyk.jpg"])
    (root / "files" / "link").symlink_to(root)
    settings = _settings(tiny_model_dir, root / "state", label_studio_url=ls.url, api_key="legacy-key",
                         local_files_root=root / "files", allowed_hosts=("localhost",), fetch_timeout=1.0,
                         max_image_bytes=2 * 2**20, download_cache_bytes=0)
    client = create_app(settings).test_client()
    _ready(client)
    yield client, ls, other
    ls.close()
    other.close()


@pytest.mark.parametrize("case", list(CASES))
def test_each_bad_input_fails_only_its_own_task(world, case):
    client, ls, other = world
    reference, expected = CASES[case]
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tasks = [{"id": 1, "data": {"image": _url(W, H, seed=1)}}, {"id": 2, "data": {"image": reference}},
             {"id": 3, "data": {"image": _url(W, H, seed=2)}}]
    response = _predict(client, tasks)
    assert response.status_code == 200, response.json
    first, middle, last = response.json["results"]
    for good in (first, last):  # the neighbours are untouched
        assert good["result"] and good["result"][0]["original_width"] == W
    errors = {e["task"]: e["error"] for e in response.json.get("errors", [])}
    if isinstance(expected, tuple):
        assert 2 not in errors and middle["result"], errors
        brush = [r for r in middle["result"] if r["type"] == "brushlabels"]
        width, height = brush[0]["original_width"], brush[0]["original_height"]
        assert (width, height) == expected
        assert rle_to_mask(brush[0]["value"]["rle"], height, width).shape == (height, width)
    else:
        assert middle == [] and set(errors) == {2}
        import re

        assert re.search(expected, errors[2]), errors[2]
    if case == "redirect to another host":
        assert other.seen[-1] == ("/img.jpg", None)  # Label Studio's token stayed home
    if case == "30000x30000 PNG":  # refused from its header: nothing near 900 M pixels was allocated
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 300_000  # KiB


def test_exif_orientations_turn_the_image_upright():
    """Orientation n stores the upright scene transformed; each decodes back to the same upright pixels."""
    from seediff_core.images import load_image

    upright = np.asarray(load_image(_encode(_scene(), "PNG")), dtype=np.float64)
    transforms = {2: [Image.FLIP_LEFT_RIGHT], 3: [Image.ROTATE_180], 4: [Image.FLIP_TOP_BOTTOM],
                  5: [Image.TRANSPOSE], 6: [Image.ROTATE_90], 7: [Image.TRANSVERSE], 8: [Image.ROTATE_270]}
    for orientation, steps in transforms.items():
        stored = _scene()
        for step in steps:
            stored = stored.transpose(step)
        exif = Image.Exif()
        exif[0x0112] = orientation
        decoded = np.asarray(load_image(_encode(stored, "PNG", exif=exif)), dtype=np.float64)
        assert decoded.shape == upright.shape and np.abs(decoded - upright).mean() < 1.0, orientation


def test_unicode_configs_and_the_most_labels_one_image_takes(world):
    client, _, _ = world
    labels = ["猫", "Ünïcödé ✓", "chien \"quoted\" & <escaped>"]
    escaped = [label.replace("&", "&amp;").replace("\"", "&quot;").replace("<", "&lt;").replace(">", "&gt;") for label in labels]
    config = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
              + "".join(f'<Label value="{label}"/>' for label in escaped) + "</BrushLabels></View>")
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": _url(W, H)}}], "label_config": config,
                                             "project": "40.1"})
    assert response.status_code == 200
    (prediction,) = response.json["results"]
    assert {r["value"]["brushlabels"][0] for r in prediction["result"]} <= set(labels) and prediction["result"]
    # MAX_LABELS (256, ADE20K has 150) are served; one more is refused before any work, naming the config.
    for count, status in ((MAX_LABELS, 200), (MAX_LABELS + 1, 400)):
        many = [f"label {i}" for i in range(count)]
        config = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
                  + "".join(f'<Label value="{label}"/>' for label in many) + "</BrushLabels></View>")
        response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": _url(W, H)}}],
                                                 "label_config": config, "project": "41.1"})
        assert response.status_code == status and "errors" not in response.json, response.json
        if status == 200:
            assert {r["value"]["brushlabels"][0] for r in response.json["results"][0]["result"]} <= set(many)
    assert response.json["detail"]["field"] == "label_config" and f"at most {MAX_LABELS}" in response.json["error"]
