"""Where chat files live: ``LocalFileStorage`` under ``<app_dir>/files/``, or S3 when configured.

Object keys come partly from users (an upload's file name), so every key is checked before it
touches the disk: relative, ``/``-separated, no empty, ``.`` or ``..`` segment, no NUL, control
character or backslash, at most ``MAX_KEY_CHARS``; the resolved path must stay inside the root
(a symlink inside cannot lead out either). A refused key raises ``UnsafeObjectKey``.

The browser never gets a path: ``get_read_url`` is a same-origin URL (``/weaver/files/<key>``)
answered by ``ui.history.route``, which checks who asks before serving anything.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import quote

from chainlit.data.storage_clients.base import BaseStorageClient

from core.safe_files import open_plain

MAX_KEY_CHARS = 1024
MAX_SEGMENT_BYTES = 255  # a file name on ext4, xfs, btrfs
MAX_NAME_BYTES = 150  # the file-name part of a key we build, leaving room on any file system
DEFAULT_URL_PREFIX = "/weaver/files"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnsafeObjectKey(ValueError):
    """An object key that could name something outside the storage folder, or no file at all."""


def check_object_key(key: object) -> str:
    """``key`` if it is a safe relative object key; raises ``UnsafeObjectKey`` otherwise."""
    if not isinstance(key, str) or not key:
        raise UnsafeObjectKey("an object key must be a non-empty string")
    if len(key) > MAX_KEY_CHARS:
        raise UnsafeObjectKey(f"an object key may have at most {MAX_KEY_CHARS} characters")
    if _CONTROL.search(key) or "\\" in key:
        raise UnsafeObjectKey("an object key may not hold NUL, control characters or backslashes")
    if key.startswith("/"):
        raise UnsafeObjectKey("an object key must be relative")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise UnsafeObjectKey("an object key may not have empty, '.' or '..' segments")
        if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            raise UnsafeObjectKey(f"an object key segment may have at most {MAX_SEGMENT_BYTES} bytes")
    return key


def safe_file_name(name: object, fallback: str = "file") -> str:
    """A file name that is one harmless key segment: no folders, controls, or leading dots; short."""
    text = unicodedata.normalize("NFC", str(name or ""))
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = _CONTROL.sub("", text).strip().lstrip(".").strip()
    while len(text.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        stem, dot, ext = text.rpartition(".")
        if dot and 0 < len(ext) <= 16 and stem:  # keep the extension, shorten the stem
            text = f"{stem[:-1]}.{ext}"
        else:
            text = text[:-1]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: not a name any file system agrees on
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text or fallback


class LocalFileStorage(BaseStorageClient):
    """Chainlit's storage client interface over a local folder (created 0700, files 0600)."""

    def __init__(self, root: Path | str, url_prefix: str = DEFAULT_URL_PREFIX) -> None:
        self.root = Path(root).resolve()
        self.url_prefix = url_prefix.rstrip("/")
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path_for(self, object_key: str) -> Path:
        """The file a key names, after checking that it stays inside the root."""
        check_object_key(object_key)
        path = self.root / object_key
        real = os.path.realpath(path)
        if not real.startswith(str(self.root) + os.sep):
            raise UnsafeObjectKey("an object key may not lead outside the storage folder")
        return path

    def existing_file(self, object_key: str) -> Path | None:
        """The regular file a key names, or None (also for a refused key)."""
        try:
            path = self.path_for(object_key)
        except UnsafeObjectKey:
            return None
        return path if path.is_file() and not path.is_symlink() else None

    async def upload_file(
        self,
        object_key: str,
        data: bytes | str,
        mime: str = "application/octet-stream",
        overwrite: bool = True,
        content_disposition: str | None = None,
    ) -> dict[str, Any]:
        """Write ``data`` atomically under ``object_key``; returns ``{"object_key", "url"}`` as
        Chainlit's clients do. The MIME type and disposition are kept by the database, not here."""
        path = self.path_for(object_key)
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        await asyncio.to_thread(self._write, path, overwrite, lambda out: out.write(payload))
        return {"object_key": object_key, "url": await self.get_read_url(object_key)}

    async def upload_path(self, object_key: str, source: Path | str, overwrite: bool = True) -> dict[str, Any]:
        """Copy the file at ``source`` without reading it into memory. The source is opened once,
        refusing a link, FIFO, device or hard link as its last component (``core.safe_files``), and
        copied from that handle: Weaver hands Chainlit a session folder's files as bytes, so a path
        here is Chainlit's own upload store, but a path is never followed blindly."""
        path = self.path_for(object_key)
        opened = await asyncio.to_thread(open_plain, source)

        def copy(out: Any) -> None:
            shutil.copyfileobj(opened.file, out, 1024 * 1024)

        try:
            await asyncio.to_thread(self._write, path, overwrite, copy)
        finally:
            opened.close()
        return {"object_key": object_key, "url": await self.get_read_url(object_key)}

    def _write(self, path: Path, overwrite: bool, fill: Any) -> None:
        self._make_parents(path.parent)
        if not overwrite and path.exists():
            raise FileExistsError(f"object {path.relative_to(self.root)} exists")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                fill(out)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def _make_parents(self, folder: Path) -> None:
        missing = []
        while folder != self.root and not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for each in reversed(missing):
            each.mkdir(mode=0o700, exist_ok=True)

    async def delete_file(self, object_key: str) -> bool:
        """Remove the file and any folders it leaves empty; False when there was none."""
        path = self.path_for(object_key)
        return await asyncio.to_thread(self._delete, path)

    def _delete(self, path: Path) -> bool:
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        folder = path.parent
        while folder != self.root:
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): stop climbing
                break
            folder = folder.parent
        return True

    async def get_read_url(self, object_key: str) -> str:
        check_object_key(object_key)
        return f"{self.url_prefix}/{quote(object_key, safe='/')}"

    async def close(self) -> None:
        return None


def s3_storage(url: str) -> BaseStorageClient:
    """Chainlit's own S3 client for ``s3://bucket``; credentials, region and endpoint come from the
    standard AWS settings (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
    ``AWS_ENDPOINT_URL`` for S3-compatible servers). Not exercised by Weaver's tests."""
    from chainlit.data.storage_clients.s3 import S3StorageClient

    bucket = url.removeprefix("s3://").strip("/")
    if not bucket or "/" in bucket:
        raise ValueError(f"{url!r}: S3 storage is named as s3://bucket (no folder)")

    class S3Storage(S3StorageClient):
        async def close(self) -> None:  # boto3's close() is synchronous; Chainlit's awaits it
            self.client.close()

    return S3Storage(bucket=bucket)
