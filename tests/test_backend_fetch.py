"""Image fetching rules, against real HTTP servers on 127.0.0.1 (threads in the test process)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from urllib.parse import quote, unquote

import pytest

from backend.fetch import FetchError, ImageFetcher, TokenProvider, _b64url
from backend.settings import BackendSettings
from fake_http import FakeHTTPServer

PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 100


def _jwt(exp: float) -> str:
    part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")  # noqa: E731
    return f"{part({'alg': 'HS256'})}.{part({'exp': exp, 'token_type': 'refresh'})}.signature"


@pytest.fixture
def other():
    server = FakeHTTPServer(lambda path, headers: (200, {}, PNG) if path == "/img.png" else (404, {}, b""))
    yield server
    server.close()


@pytest.fixture
def ls(other):
    access = _jwt(time.time() + 3600)

    def routes(path, headers):
        if path == "/api/token/refresh/":
            return 200, {}, json.dumps({"access": server.access}).encode()
        if path.startswith("/data/upload/"):
            ok = headers.get("Authorization") in (f"Bearer {server.access}", "Token legacy-key")
            return (200, {"Content-Length": str(len(PNG))}, PNG) if ok else (401, {}, b"")
        if path.startswith("/tasks/7/presign/"):
            return 303, {"Location": f"{other.url}/img.png"}, b""
        if path == "/redirect-to-self":
            return 302, {"Location": "/data/upload/1/a.png"}, b""
        if path == "/big":
            return 200, {"Content-Length": str(10**9)}, b""
        if path == "/slow":
            time.sleep(3)
            return 200, {}, PNG
        if path == "/endless":
            return 200, {}, _endless  # no Content-Length: only counting the bytes stops it
        if path.startswith("/loop/"):
            hop = int(path.rsplit("/", 1)[-1])
            return 302, {"Location": f"/loop/{hop + 1}"}, b""
        if path == "/to-other":
            return 302, {"Location": f"{other.url}/img.png"}, b""
        if path.startswith("/to?"):
            return 302, {"Location": unquote(path[4:])}, b""
        if path.startswith("/expiring/"):
            ok = headers.get("Authorization") == f"Bearer {server.expiring_ok}"
            return (200, {}, PNG) if ok else (401, {}, b"")
        return 404, {}, b""

    server = FakeHTTPServer(routes)
    server.access = server.expiring_ok = access
    yield server
    server.close()


def _endless(wfile):
    while True:
        wfile.write(b"\0" * 65536)


def _fetcher(ls, tmp_path, **changes) -> ImageFetcher:
    values = dict(label_studio_url=ls.url, api_key="legacy-key", model_dir=tmp_path, fetch_timeout=2.0,
                  max_image_bytes=10_000, download_cache_bytes=0)
    values.update(changes)
    return ImageFetcher(BackendSettings(**values))


def test_uploads_use_the_legacy_token_only_on_the_label_studio_host(ls, other, tmp_path):
    fetcher = _fetcher(ls, tmp_path, allowed_hosts=("127.0.0.1",))
    assert fetcher.fetch("/data/upload/1/a.png") == PNG
    assert fetcher.fetch("upload/1/a.png") == PNG
    assert ls.seen[0] == ("/data/upload/1/a.png", "Token legacy-key")
    assert fetcher.fetch(f"{other.url}/img.png") == PNG
    assert other.seen[-1] == ("/img.png", None)  # no credentials for another host


def test_personal_access_tokens_are_exchanged_for_access_tokens(ls, tmp_path):
    pat = _jwt(time.time() + 10**9)
    fetcher = _fetcher(ls, tmp_path, api_key=pat)
    assert fetcher.fetch("/data/upload/1/a.png") == PNG
    assert fetcher.fetch("/data/upload/1/b.png") == PNG
    exchanges = [entry for entry in ls.seen if entry[0] == "/api/token/refresh/"]
    assert exchanges == [("/api/token/refresh/", {"refresh": pat})]  # exchanged once, reused
    assert ("/data/upload/1/b.png", f"Bearer {ls.access}") in ls.seen


def test_hosts_outside_the_allow_list_are_refused(ls, other, tmp_path):
    with pytest.raises(FetchError, match="not in SEEDIFF_ALLOWED_HOSTS"):
        _fetcher(ls, tmp_path).fetch(f"{other.url}/img.png")
    # "*" admits public hosts only; 127.0.0.1 is not public.
    with pytest.raises(FetchError, match="not in SEEDIFF_ALLOWED_HOSTS"):
        _fetcher(ls, tmp_path, allowed_hosts=("*",)).fetch(f"{other.url}/img.png")


def test_cloud_uris_are_presigned_and_private_redirects_refused(ls, other, tmp_path):
    uri = "s3://bucket/images/a.png"
    with pytest.raises(FetchError, match="no task id"):
        _fetcher(ls, tmp_path).fetch(uri)
    with pytest.raises(FetchError, match="redirect to '127.0.0.1"):
        _fetcher(ls, tmp_path).fetch(uri, task_id=7)  # the presigned target is a private address
    assert ls.seen[-1][0] == f"/tasks/7/presign/?fileuri={_b64url(uri)}"
    assert _fetcher(ls, tmp_path, allowed_hosts=("127.0.0.1",)).fetch(uri, task_id=7) == PNG


def test_redirects_on_the_label_studio_host_are_followed(ls, tmp_path):
    assert _fetcher(ls, tmp_path).fetch(f"{ls.url}/redirect-to-self") == PNG


def test_errors_name_the_problem(ls, tmp_path):
    fetcher = _fetcher(ls, tmp_path)
    with pytest.raises(FetchError, match="HTTP 404") as info:
        fetcher.fetch("/data/missing.png")
    assert info.value.status == 404
    with pytest.raises(FetchError, match="HTTP 401"):
        _fetcher(ls, tmp_path, api_key="wrong").fetch("/data/upload/1/a.png")
    with pytest.raises(FetchError, match="exceeds the limit"):
        fetcher.fetch(f"{ls.url}/big")
    with pytest.raises(FetchError, match="Timeout"):
        _fetcher(ls, tmp_path, fetch_timeout=0.5).fetch(f"{ls.url}/slow")
    with pytest.raises(FetchError, match="unsupported URL scheme"):
        fetcher.fetch("ftp://x/y.png")
    with pytest.raises(FetchError, match="LABEL_STUDIO_URL is not set"):
        _fetcher(ls, tmp_path, label_studio_url=None).fetch("/data/upload/1/a.png")


def test_local_files_come_from_disk_inside_the_root_only(ls, tmp_path):
    root = tmp_path / "files"
    (root / "ds").mkdir(parents=True)
    (root / "ds" / "a.png").write_bytes(PNG)
    fetcher = _fetcher(ls, tmp_path, local_files_root=root)
    assert fetcher.fetch("/data/local-files/?d=ds/a.png") == PNG
    assert not any(path.startswith("/data/local-files") for path, _ in ls.seen)
    with pytest.raises(FetchError, match="leaves LOCAL_FILES_DOCUMENT_ROOT"):
        fetcher.fetch("/data/local-files/?d=../../etc/passwd")


def test_data_urls(ls, tmp_path):
    fetcher = _fetcher(ls, tmp_path)
    assert fetcher.fetch("data:image/png;base64," + base64.b64encode(PNG).decode()) == PNG
    with pytest.raises(FetchError, match="base64"):
        fetcher.fetch("data:image/png;base64,***")
    with pytest.raises(FetchError, match="exceeds"):
        fetcher.fetch("data:image/png;base64," + base64.b64encode(b"x" * 20_000).decode())


def test_download_cache_is_reused_and_bounded(ls, tmp_path):
    fetcher = _fetcher(ls, tmp_path, download_cache_bytes=300)  # 2 entries of 32 + 100 bytes
    for name in ("a", "b", "c"):
        assert fetcher.fetch(f"/data/upload/1/{name}.png") == PNG
    calls = len(ls.seen)
    assert fetcher.fetch("/data/upload/1/c.png") == PNG
    assert len(ls.seen) == calls  # served from the cache
    cached = list(Path(tmp_path / "downloads").iterdir())
    assert sum(p.stat().st_size for p in cached) <= 300 and len(cached) == 2  # the oldest was evicted


def test_token_provider_without_key_sends_nothing():
    assert TokenProvider("http://x", None, 1).header() == {}
    assert TokenProvider("http://x", "plain", 1).header() == {"Authorization": "Token plain"}


# ----------------------------------------------------------------------------- one test per rule
# Each test below fails when the rule it names is deleted from backend/fetch.py (or server.py for
# auth); tools/mutation_check.py deletes each rule in turn and shows it. The table is in
# docs/reliability.md.


def test_rule_credentials_are_dropped_when_a_redirect_leaves_the_label_studio_host(ls, other, tmp_path):
    fetcher = _fetcher(ls, tmp_path, allowed_hosts=("127.0.0.1",))
    assert fetcher.fetch("/to-other") == PNG
    assert ls.seen[-1] == ("/to-other", "Token legacy-key")
    assert other.seen == [("/img.png", None)]


def test_rule_redirects_are_capped(ls, tmp_path):
    with pytest.raises(FetchError, match="more than 5 redirects"):
        _fetcher(ls, tmp_path).fetch("/loop/0")
    assert [path for path, _ in ls.seen] == [f"/loop/{hop}" for hop in range(6)]


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/a.png", "gopher://127.0.0.1:70/x"])
def test_rule_redirects_to_other_schemes_are_refused(ls, tmp_path, target):
    # 127.0.0.1 is allowed here, so only the scheme rule stands between the redirect and its target.
    with pytest.raises(FetchError, match="redirect to a non-http URL refused"):
        _fetcher(ls, tmp_path, allowed_hosts=("127.0.0.1",)).fetch(f"/to?{quote(target)}")


@pytest.mark.parametrize("target", ["http://127.0.0.1:1/a.png", "http://10.0.0.1/a.png", "http://169.254.169.254/latest/meta-data/",
                                    "http://[::1]:1/a.png", "http://localhost:1/a.png"])
def test_rule_redirects_to_private_addresses_are_refused(ls, tmp_path, target):
    with pytest.raises(FetchError, match="refused \\(private address or not allowed\\)"):
        _fetcher(ls, tmp_path).fetch(f"/to?{quote(target)}")


def test_rule_endless_bodies_stop_at_the_size_cap(ls, tmp_path):
    started = time.perf_counter()
    with pytest.raises(FetchError, match="more than the limit of 10000 bytes"):
        _fetcher(ls, tmp_path).fetch(f"{ls.url}/endless")
    assert time.perf_counter() - started < 30  # it stopped reading; the 2 s timeout alone would not stop a stream


def test_rule_declared_sizes_over_the_cap_are_refused_before_reading(ls, tmp_path):
    with pytest.raises(FetchError, match="1000000000 bytes exceeds the limit"):
        _fetcher(ls, tmp_path).fetch(f"{ls.url}/big")


def test_rule_local_files_over_the_cap_are_refused(ls, tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    (root / "big.png").write_bytes(PNG + b"x" * 20_000)
    with pytest.raises(FetchError, match="exceeds the limit of 10000"):
        _fetcher(ls, tmp_path, local_files_root=root).fetch("/data/local-files/?d=big.png")


@pytest.mark.parametrize("reference", ["../secret.png", "%2e%2e/secret.png", "%252e%252e/secret.png",
                                       "ds/../../secret.png", "/etc/hostname", "link/secret.png"])
def test_rule_local_files_stay_inside_the_document_root(ls, tmp_path, reference):
    root = tmp_path / "files"
    (root / "ds").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(PNG)
    (root / "link").symlink_to(tmp_path)  # a symlink inside the root that points out of it
    with pytest.raises(FetchError, match="leaves LOCAL_FILES_DOCUMENT_ROOT"):
        _fetcher(ls, tmp_path, local_files_root=root).fetch(f"/data/local-files/?d={reference}")


def test_rule_an_expired_access_token_is_renewed_once_after_a_401(ls, tmp_path):
    pat = _jwt(time.time() + 10**9)
    fetcher = _fetcher(ls, tmp_path, api_key=pat)
    assert fetcher.fetch("/data/upload/1/a.png") == PNG
    ls.access = ls.expiring_ok = _jwt(time.time() + 3600) + "renewed"  # the old access token is now refused
    assert fetcher.fetch("/expiring/a.png") == PNG
    exchanges = [entry for entry in ls.seen if entry[0] == "/api/token/refresh/"]
    assert len(exchanges) == 2
    ls.expiring_ok = "never-issued"  # a second 401 is an answer, not a loop
    with pytest.raises(FetchError, match="HTTP 401"):
        fetcher.fetch("/expiring/b.png")


def test_rule_cache_entries_are_checked_and_a_damaged_one_fetched_again(ls, tmp_path):
    fetcher = _fetcher(ls, tmp_path, download_cache_bytes=10**6)
    assert fetcher.fetch("/data/upload/1/a.png") == PNG
    (entry,) = (tmp_path / "downloads").iterdir()
    entry.write_bytes(entry.read_bytes()[:-10])  # a torn write
    calls = len(ls.seen)
    assert fetcher.fetch("/data/upload/1/a.png") == PNG
    assert len(ls.seen) == calls + 1  # fetched again, not served damaged
    assert fetcher.fetch("/data/upload/1/a.png") == PNG and len(ls.seen) == calls + 1  # and cached again


def test_rule_an_unwritable_cache_is_skipped(ls, tmp_path):
    (tmp_path / "downloads").write_text("a file where the cache folder should be")
    fetcher = _fetcher(ls, tmp_path, download_cache_bytes=10**6)
    assert fetcher.fetch("/data/upload/1/a.png") == PNG
    assert fetcher.fetch("/data/upload/1/a.png") == PNG
