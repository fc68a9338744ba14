"""Getting a task's image bytes from wherever Label Studio says it is.

Sources: uploads (``/data/upload/...``), local files (``/data/local-files/?d=...``, read from disk
when LOCAL_FILES_DOCUMENT_ROOT is set, else through Label Studio), http(s) URLs, cloud URIs
(``s3://``, ``gs://``, ``azure-blob://``) through Label Studio's presign endpoint (needs the task
id), and ``data:`` URLs.

Rules: credentials go only to the Label Studio host. Other hosts must be in the allow-list
(SEEDIFF_ALLOWED_HOSTS; "*" allows any public host). Redirects are followed by hand (at most 5),
credentials are dropped when leaving the Label Studio host, and a redirect to a private, loopback or
link-local address is refused unless that host is Label Studio's or named in the allow-list.
Every request has a timeout and a size cap; downloads are cached in MODEL_DIR/downloads, bounded
in bytes, least recently used first out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import logging
import os
import socket
import threading
import time
from urllib.parse import parse_qs, unquote, urljoin, urlparse

import requests

from .settings import BackendSettings

log = logging.getLogger(__name__)

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")
MAX_REDIRECTS = 5


class FetchError(Exception):
    """The image could not be fetched; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class TokenProvider:
    """Authorization header for Label Studio. A Personal Access Token (a JWT refresh token) is
    exchanged at /api/token/refresh/ for short-lived access tokens, renewed before they expire; a
    legacy token is sent as ``Token <key>``."""

    def __init__(self, base_url: str | None, api_key: str | None, timeout: float):
        self.base_url, self.api_key, self.timeout = base_url, api_key, timeout
        self._access: tuple[str, float] | None = None
        self._lock = threading.Lock()

    @property
    def is_pat(self) -> bool:
        return bool(self.api_key) and _jwt_expiry(self.api_key) is not None

    def header(self, renew: bool = False) -> dict[str, str]:
        if not self.api_key:
            return {}
        if not self.is_pat:
            return {"Authorization": f"Token {self.api_key}"}
        with self._lock:
            if renew or self._access is None or self._access[1] < time.time() + 30:
                self._access = self._exchange()
            return {"Authorization": f"Bearer {self._access[0]}"}

    def _exchange(self) -> tuple[str, float]:
        if not self.base_url:
            raise FetchError("LABEL_STUDIO_URL is not set, so the Personal Access Token cannot be exchanged")
        try:
            response = requests.post(f"{self.base_url}/api/token/refresh/", json={"refresh": self.api_key},
                                     timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise FetchError(f"token exchange with {self.base_url} failed: {exc}") from exc
        if response.status_code != 200:
            raise FetchError(f"Label Studio refused the Personal Access Token ({response.status_code}): "
                             f"check LABEL_STUDIO_API_KEY", response.status_code)
        access = response.json()["access"]
        return access, _jwt_expiry(access) or time.time() + 60


class ImageFetcher:
    def __init__(self, settings: BackendSettings, tokens: TokenProvider | None = None):
        self.settings = settings
        self.base = settings.label_studio_url
        self.tokens = tokens or TokenProvider(self.base, settings.api_key, settings.fetch_timeout)
        self.cache_dir = settings.model_dir / "downloads"
        self._lock = threading.Lock()

    def fetch(self, url: str, task_id: int | None = None) -> bytes:
        """The image bytes at ``url`` (as it appears in a task's data).

        Raises:
            FetchError: not allowed, not found, unauthorised, too large, timed out, or unreachable.
        """
        if not isinstance(url, str) or not url.strip():
            raise FetchError(f"the task's image reference is empty or not a string: {url!r}")
        url = url.strip()
        if url.startswith("data:"):
            return self._data_url(url)
        parsed = urlparse(url)
        if parsed.scheme in CLOUD_SCHEMES:
            if task_id is None:
                raise FetchError(f"{url}: cloud storage URIs are presigned by Label Studio per task; no task id given")
            return self._cached(url, lambda: self._download(
                f"{self._require_base(url)}/tasks/{task_id}/presign/?fileuri={_b64url(url)}"))
        if not parsed.scheme:
            if url.startswith("upload/"):
                url = "/data/" + url
            if url.startswith("/data/local-files/") and self.settings.local_files_root is not None:
                local = self._local_file(url)
                if local is not None:
                    return local
            return self._cached(self._require_base(url) + url, lambda: self._download(self._require_base(url) + url))
        if parsed.scheme in ("http", "https"):
            return self._cached(url, lambda: self._download(url))
        raise FetchError(f"{url}: unsupported URL scheme {parsed.scheme!r}")

    # ------------------------------------------------------------------ sources

    def _data_url(self, url: str) -> bytes:
        header, _, payload = url.partition(",")
        if ";base64" not in header:
            raise FetchError("only base64 data: URLs are supported")
        if len(payload) * 3 // 4 > self.settings.max_image_bytes:
            raise FetchError(f"data: URL exceeds the limit of {self.settings.max_image_bytes} bytes")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise FetchError(f"data: URL is not valid base64: {exc}") from exc

    def _local_file(self, url: str) -> bytes | None:
        relative = unquote(parse_qs(urlparse(url).query).get("d", [""])[0])
        root = self.settings.local_files_root.resolve()
        path = (root / relative).resolve()
        if root not in path.parents:
            raise FetchError(f"{url}: the path leaves LOCAL_FILES_DOCUMENT_ROOT")
        if not path.is_file():
            return None  # not on this machine: ask Label Studio
        if path.stat().st_size > self.settings.max_image_bytes:
            raise FetchError(f"{url}: {path.stat().st_size} bytes exceeds the limit of {self.settings.max_image_bytes}")
        return path.read_bytes()

    def _require_base(self, url: str) -> str:
        if not self.base:
            raise FetchError(f"{url}: served by Label Studio, but LABEL_STUDIO_URL is not set")
        return self.base

    # ------------------------------------------------------------------ http

    def _download(self, url: str) -> bytes:
        ls_host = urlparse(self.base).netloc.lower() if self.base else None
        first_host = urlparse(url).netloc.lower()
        if first_host != ls_host and not self._host_allowed(first_host, redirected=False):
            raise FetchError(f"{url}: host {first_host!r} is not Label Studio's and not in SEEDIFF_ALLOWED_HOSTS")
        renewed = False
        for _ in range(MAX_REDIRECTS + 1):
            host = urlparse(url).netloc.lower()
            headers = self.tokens.header() if host == ls_host else {}
            timeout = (min(5.0, self.settings.fetch_timeout), self.settings.fetch_timeout)
            try:
                response = requests.get(url, headers=headers, timeout=timeout, stream=True, allow_redirects=False)
            except requests.RequestException as exc:
                raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from exc
            with response:
                if response.status_code == 401 and headers and self.tokens.is_pat and not renewed:
                    self.tokens.header(renew=True)  # the access token may have just expired
                    renewed = True
                    continue
                if response.is_redirect or response.status_code in (301, 302, 303, 307, 308):
                    target = urljoin(url, response.headers.get("Location", ""))
                    target_host = urlparse(target).netloc.lower()
                    if urlparse(target).scheme not in ("http", "https"):
                        raise FetchError(f"{url}: redirect to a non-http URL refused")
                    if target_host != ls_host and not self._host_allowed(target_host, redirected=True):
                        raise FetchError(f"{url}: redirect to {target_host!r} refused (private address or not allowed)")
                    url = target
                    continue
                if response.status_code != 200:
                    raise FetchError(f"{url}: HTTP {response.status_code}", response.status_code)
                return self._read_capped(response, url)
        raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects")

    def _host_allowed(self, netloc: str, redirected: bool) -> bool:
        hostname = urlparse(f"//{netloc}").hostname or ""  # also for IPv6 literals: [::1]:8080 -> ::1
        listed = {urlparse(f"//{h}").hostname or h for h in self.settings.allowed_hosts}
        if hostname in listed or netloc in self.settings.allowed_hosts:
            return True
        # Any public host when "*" is listed, and for redirects (e.g. presigned cloud URLs that Label
        # Studio hands out); never a private, loopback or link-local one.
        return ("*" in listed or redirected) and _is_public(hostname)

    def _read_capped(self, response: requests.Response, url: str) -> bytes:
        limit = self.settings.max_image_bytes
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise FetchError(f"{url}: {declared} bytes exceeds the limit of {limit}")
        chunks, size = [], 0
        try:
            for chunk in response.iter_content(1 << 16):
                size += len(chunk)
                if size > limit:
                    raise FetchError(f"{url}: more than the limit of {limit} bytes")
                chunks.append(chunk)
        except requests.RequestException as exc:
            raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from exc
        return b"".join(chunks)

    # ------------------------------------------------------------------ cache

    def _cached(self, key: str, produce) -> bytes:
        """Each entry is the content's sha256 then the content, written to a temporary file and renamed,
        so a kill mid-write leaves no entry and a damaged entry is detected, dropped and fetched again.
        A cache that cannot be written (disk full, read-only) is skipped with a warning."""
        if self.settings.download_cache_bytes <= 0:
            return produce()
        path = self.cache_dir / hashlib.sha256(key.encode()).hexdigest()
        try:
            stored = path.read_bytes()
        except OSError:
            stored = None
        if stored is not None:
            digest, data = stored[:32], stored[32:]
            if hashlib.sha256(data).digest() == digest:
                try:
                    os.utime(path)  # most recently used
                except FileNotFoundError:
                    pass  # evicted by another request since it was read: the bytes in hand are whole
                return data
            log.warning("download cache entry %s is damaged: fetched again", path.name)
            path.unlink(missing_ok=True)
        data = produce()
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(hashlib.sha256(data).digest() + data)
            os.replace(tmp, path)
            self._evict()
        except OSError as exc:
            log.warning("download cache %s not written (%s); serving without it", self.cache_dir, exc)
            tmp.unlink(missing_ok=True) if tmp.parent.is_dir() else None
        return data

    def _evict(self) -> None:
        with self._lock:
            files = []
            for p in self.cache_dir.iterdir():
                try:
                    stat = p.stat()
                except FileNotFoundError:  # evicted by another worker process meanwhile
                    continue
                if p.suffix == ".tmp" and stat.st_mtime < time.time() - 3600:
                    p.unlink(missing_ok=True)  # left by a process killed mid-write
                elif p.suffix != ".tmp":
                    files.append((stat.st_mtime, stat.st_size, p))
            total = sum(size for _, size, _ in files)
            for _, size, path in sorted(files):
                if total <= self.settings.download_cache_bytes:
                    break
                path.unlink(missing_ok=True)
                total -= size


def _is_public(hostname: str) -> bool:
    try:
        infos = socket.getaddrinfo(hostname, None)
    except (socket.gaierror, UnicodeError):
        return False
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if (address.is_private or address.is_loopback or address.is_link_local or address.is_reserved
                or address.is_multicast or address.is_unspecified):
            return False
    return True


def _b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _jwt_expiry(token: str) -> float | None:
    """The ``exp`` of a JWT (unverified: only to schedule renewal), or None if it is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return float(payload["exp"]) if isinstance(payload, dict) and "exp" in payload else None
