"""Elements (uploads, results, custom elements): files in storage, rows in ``elements``.

Files are stored under keys we build (``<thread>/<element>/<safe name>``), never from the
client's name alone; an element given only by URL is recorded, never fetched by the server
(Chainlit would download any URL: server-side request forgery).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import quote

from chainlit.data.utils import queue_until_user_message

from ui.history.rows import ELEMENT_COLUMNS, ELEMENT_ID, OCTET_STREAM, is_thread_id, read_bytes
from ui.history.storage import LocalFileStorage, check_object_key, safe_file_name
from ui.history.store import HistoryStore, sql_text

if TYPE_CHECKING:
    from chainlit.element import Element, ElementDict

logger = logging.getLogger("weaver.ui.history")

ELEMENT_ROW = "element:"  # an element's row, queued beside steps and thread changes


class Elements(HistoryStore):
    """Chainlit's element methods, and ``file_for`` for the file route."""

    @queue_until_user_message()
    async def create_element(self, element: Element) -> None:
        try:
            await self._write_element(element)
        except Exception:
            logger.exception("could not store element %s", getattr(element, "id", "?"))

    async def _write_element(self, element: Element) -> None:
        storage = self.storage_provider
        if storage is None or not element.for_id:  # as Chainlit: only files attached to a step are kept
            return
        if not is_thread_id(element.thread_id) or not ELEMENT_ID.match(str(element.id)):
            logger.warning("refused element %.80r of thread %.80r: bad id", element.id, element.thread_id)
            return
        mime = element.mime or OCTET_STREAM
        name = safe_file_name(element.name)
        values: dict[str, Any] = {k: v for k, v in element.to_dict().items() if k in ELEMENT_COLUMNS and v is not None}
        values["mime"] = mime
        if element.path or element.content is not None:
            key = check_object_key(f"{element.thread_id}/{element.id}/{name}")
            if element.path and isinstance(storage, LocalFileStorage):
                stored = await storage.upload_path(key, element.path)
            else:
                if element.path:
                    data: bytes | str = await asyncio.to_thread(read_bytes, element.path)
                else:
                    data = element.content  # type: ignore[assignment]
                disposition = f"attachment; filename*=UTF-8''{quote(name)}"
                stored = await storage.upload_file(
                    object_key=key, data=data, mime=mime, overwrite=True, content_disposition=disposition
                )
            if not stored:
                raise RuntimeError(f"storage refused element {element.id}")
            values["objectKey"] = stored.get("object_key", key)
            values["url"] = stored.get("url")
        elif not element.url:
            return  # nothing to keep
        for column in ("props", "playerConfig"):
            if column in values:
                values[column] = self._json_param(values[column])
        # Stored with the steps (kept, and stored later, if the database is away); here once stored.
        self._writes.add(f"{ELEMENT_ROW}{element.thread_id}/{element.id}", values)
        await self._writes.flush()

    async def get_element(self, thread_id: str, element_id: str) -> Optional[ElementDict]:
        columns = ", ".join(f'"{c}"' for c in ELEMENT_COLUMNS)
        async with self.reading() as conn:
            rows = await self._rows(
                conn,
                f'SELECT {columns} FROM elements WHERE "threadId" = :thread_id AND "id" = :id',
                {"thread_id": thread_id, "id": element_id},
            )
        return await self._element_dict(rows[0]) if rows else None

    @queue_until_user_message()
    async def delete_element(self, element_id: str, thread_id: Optional[str] = None) -> None:
        where = '"id" = :id' + (' AND "threadId" = :thread_id' if thread_id else "")
        params = {"id": element_id, "thread_id": thread_id} if thread_id else {"id": element_id}
        async with self.transaction() as conn:
            rows = await self._rows(conn, f'SELECT "objectKey" FROM elements WHERE {where}', params)
            await conn.execute(sql_text(f"DELETE FROM elements WHERE {where}"), params)
        await self._delete_files(row["objectKey"] for row in rows if row["objectKey"])

    async def file_for(self, object_key: str, user_identifier: str) -> dict[str, Any] | None:
        """The element stored under ``object_key`` if ``user_identifier`` owns its thread:
        ``{"name", "mime", "thread_id"}``; None otherwise (not found and not yours look the same)."""
        async with self.reading() as conn:
            rows = await self._rows(
                conn,
                """SELECT e."name", e."mime", e."threadId" FROM elements e JOIN threads t ON t."id" = e."threadId"
                   WHERE e."objectKey" = :key AND t."userIdentifier" = :user""",
                {"key": object_key, "user": user_identifier},
            )
        if not rows:
            return None
        return {"name": rows[0]["name"], "mime": rows[0]["mime"] or OCTET_STREAM, "thread_id": rows[0]["threadId"]}
