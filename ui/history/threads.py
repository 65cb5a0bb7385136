"""Threads (chats): created and changed through the write-behind, read whole or listed per user,
deleted with everything in them.

* ``update_thread`` never moves a thread that has an owner to another user; its changes wait in
  the write-behind with the steps and share their transaction.
* A thread's first name is a title made from its first message (``ui.titles``: Chainlit would use
  the message's Markdown verbatim); a name given later (a rename) is kept as given. The title is
  made once, in ``update_thread``, and a change whose title is already the thread's name changes
  nothing: a spool line applied twice (``write_behind``) ends as it did once.
* ``list_threads`` returns only the given user's threads, most recently active first (last step,
  else creation), each dated by that activity (the page sorts and groups its list by that date),
  searched by name (case-insensitive, Unicode-aware, the same on both databases),
  with Chainlit's cursor pagination; threads in the list carry no steps (as Chainlit's own layer).
* ``delete_thread`` removes its rows in one transaction, then its files from storage, then calls
  ``on_thread_deleted(thread_id, metadata)`` (sync or async) with the thread's metadata. What of
  the thread still waits in the write-behind is dropped, and the thread is remembered as deleted
  (in this process, and in the spool while the database fails, as a ``deleted:<thread>`` row): a
  store that was under way, or a spool taken over later, never brings the chat back.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Awaitable, Callable, Mapping, Optional, Union

from chainlit.types import PageInfo, PaginatedResponse, Pagination, ThreadDict, ThreadFilter
from sqlalchemy import bindparam
from sqlalchemy.ext.asyncio import AsyncConnection

from ui.history.elements import ELEMENT_ROW
from ui.history.rows import ELEMENT_COLUMNS, STEP_COLUMNS, is_thread_id, step_dict, thread_dict
from ui.history.store import HistoryStore, sql_text
from ui.titles import chat_title

logger = logging.getLogger("weaver.ui.history")

THREAD_CHANGE = "thread:"  # queued beside steps, whose keys begin with their thread's UUID
DELETED_THREAD = "deleted:"  # a thread deleted while its rows may be in the spool: they are not stored
DELETED_KEPT = 100_000  # deleted threads remembered by a process (a UUID each)

ThreadDeleted = Callable[[str, dict[str, Any]], Union[None, Awaitable[None]]]


def thread_of(key: str) -> str:
    """The chat a pending row belongs to: ``thread:<chat>``, ``deleted:<chat>``,
    ``element:<chat>/<element>`` or ``<chat>/<step>``."""
    for prefix in (THREAD_CHANGE, DELETED_THREAD):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key.removeprefix(ELEMENT_ROW).split("/", 1)[0]


def merge_change(kept: dict[str, Any], new: dict[str, Any]) -> None:
    """Two pending changes of one thread as one, ending where the two applied in turn would: the
    first owner stays (a second is refused when stored), metadata merges key by key (a None still
    removes its key), otherwise the later value wins."""
    for key, value in new.items():
        if key == "userId" and kept.get("userId") is not None:
            continue
        if key == "metadata" and kept.get("metadata") is not None:
            kept["metadata"] = {**kept["metadata"], **value}
        else:
            kept[key] = value


def _listed(row: Mapping[str, Any]) -> ThreadDict:
    """A thread as the sidebar lists it: dated by its last activity, which the page sorts by."""
    thread = thread_dict(row)
    thread["createdAt"] = row["last_activity"] or row["createdAt"]
    return thread


class Threads(HistoryStore):
    """Chainlit's thread methods, each thread kept to its owner."""

    on_thread_deleted: ThreadDeleted | None
    _deleted_threads: dict[str, None]  # deleted by this process, oldest first (at most DELETED_KEPT)

    async def get_thread_author(self, thread_id: str) -> str:
        """The thread's owner, or "" when there is none (Chainlit's check then answers 404)."""
        async with self.reading() as conn:
            rows = await self._rows(conn, 'SELECT "userIdentifier" FROM threads WHERE "id" = :id', {"id": thread_id})
        return str(rows[0]["userIdentifier"] or "") if rows else ""

    async def thread_names(self, thread_ids: list[str]) -> dict[str, str]:
        """The titles of these chats (one query, no steps read): the admin page's live sessions."""
        if not thread_ids:
            return {}
        marks = ", ".join(f":t{i}" for i in range(len(thread_ids)))
        async with self.reading() as conn:
            rows = await self._rows(
                conn,
                f'SELECT "id", "name" FROM threads WHERE "id" IN ({marks})',
                {f"t{i}": thread_id for i, thread_id in enumerate(thread_ids)},
            )
        return {str(row["id"]): str(row["name"]) for row in rows if row["name"]}

    async def update_thread(
        self,
        thread_id: str,
        name: Optional[str] = None,
        user_id: Optional[str] = None,
        metadata: Optional[dict] = None,
        tags: Optional[list[str]] = None,
    ) -> None:
        """Create the thread or change it. Metadata is merged (a None value removes its key); a
        ``name`` in metadata names the thread when no name is given; the owner is set once.

        Returns once the change is stored, in the transaction of whatever else is pending: changes
        from many chats at once share one (see ``write_behind``)."""
        if not is_thread_id(thread_id):
            logger.warning("refused to store a thread with id %.80r: not a UUID", thread_id)
            return
        if name is None and metadata:
            name = metadata.get("name")
        title = chat_title(str(name)) if name is not None else None
        given = {"name": name, "title": title, "userId": user_id, "metadata": metadata, "tags": tags}
        change = {k: v for k, v in given.items() if v is not None}
        self._writes.add(THREAD_CHANGE + thread_id, change, merge_change)
        await self._writes.flush()

    async def _change_thread(self, conn: AsyncConnection, thread_id: str, change: dict[str, Any]) -> None:
        """Apply one pending ``update_thread`` change inside the store's transaction, under the
        row's lock (the row exists: ``_store_rows`` made it first), so two servers or tasks changing
        the same thread at once cannot overwrite each other's metadata."""
        if not change:
            return
        lock = " FOR UPDATE" if self.dialect == "postgresql" else ""  # SQLite: BEGIN IMMEDIATE locked it
        (existing,) = await self._rows(
            conn, f'SELECT "metadata", "userId", "name" FROM threads WHERE "id" = :id{lock}', {"id": thread_id}
        )
        values: dict[str, Any] = {}
        metadata, name, user_id = change.get("metadata"), change.get("name"), change.get("userId")
        if metadata is not None:
            merged = {k: v for k, v in (existing["metadata"] or {}).items() if metadata.get(k, v) is not None}
            merged.update({k: v for k, v in metadata.items() if v is not None})
            values["metadata"] = merged
        if name is not None:
            title = str(change.get("title") or chat_title(str(name)))  # (a spool line from before titles were kept)
            if not existing["name"]:
                values["name"] = title  # the first message names the chat
            elif existing["name"] != title:
                values["name"] = str(name)  # a rename, as given (the same change again renames nothing)
        if user_id is not None:
            owner = existing["userId"]
            if owner and owner != user_id:
                logger.warning("refused to move thread %s from user %s to %s", thread_id, owner, user_id)
            else:
                users = await self._rows(conn, 'SELECT "identifier" FROM users WHERE "id" = :id', {"id": user_id})
                values["userId"] = user_id
                values["userIdentifier"] = users[0]["identifier"] if users else None
        if change.get("tags") is not None:
            values["tags"] = list(change["tags"])
        if values:
            assignments = ", ".join(f'"{column}" = :{column}' for column in values)
            await conn.execute(
                sql_text(f'UPDATE threads SET {assignments} WHERE "id" = :id'),
                {**{c: self._param(v) for c, v in values.items()}, "id": thread_id},
            )

    async def get_thread(self, thread_id: str) -> Optional[ThreadDict]:
        threads = await self.get_all_user_threads(thread_id=thread_id)
        return threads[0] if threads else None

    async def get_all_user_threads(
        self, user_id: Optional[str] = None, thread_id: Optional[str] = None
    ) -> Optional[list[ThreadDict]]:
        """One thread by id, or a user's threads (newest activity first), each with its steps,
        feedback and elements."""
        await self.flush_writes()
        clauses: list[str] = []
        params: dict[str, Any] = {"limit": self._limit()}
        if thread_id is not None:
            clauses.append('t."id" = :thread_id')
            params["thread_id"] = thread_id
        if user_id is not None:
            clauses.append('t."userId" = :user_id')
            params["user_id"] = user_id
        if not clauses:
            return []
        async with self.reading() as conn:
            rows = await self._thread_rows(conn, " OR ".join(clauses), params)
            return await self._full_threads(conn, rows)

    async def _thread_rows(self, conn: AsyncConnection, where: str, params: Mapping[str, Any]) -> list[dict]:
        sql = f"""
            SELECT t."id", t."createdAt", t."name", t."userId", t."userIdentifier", t."tags", t."metadata",
                   COALESCE((SELECT MAX(s."createdAt") FROM steps s WHERE s."threadId" = t."id"), t."createdAt", '')
                       AS last_activity
            FROM threads t
            WHERE {where}
            ORDER BY last_activity DESC, t."id" DESC
            LIMIT :limit
        """
        return await self._rows(conn, sql, params)

    async def _full_threads(self, conn: AsyncConnection, rows: list[dict]) -> list[ThreadDict]:
        threads = {row["id"]: thread_dict(row) for row in rows}
        if not threads:
            return []
        ids = {"ids": list(threads)}
        columns = ", ".join(f's."{c}"' for c in STEP_COLUMNS)
        steps = await self._rows(
            conn,
            sql_text(
                f"""SELECT {columns}, f."id" AS feedback_id, f."value" AS feedback_value,
                           f."comment" AS feedback_comment
                    FROM steps s LEFT JOIN feedbacks f ON f."forId" = s."id"
                    WHERE s."threadId" IN :ids
                    ORDER BY s."createdAt" ASC NULLS FIRST"""
            ).bindparams(bindparam("ids", expanding=True)),
            ids,
        )
        for step in steps:
            threads[step["threadId"]]["steps"].append(step_dict(step))
        element_columns = ", ".join(f'"{c}"' for c in ELEMENT_COLUMNS)
        elements = await self._rows(
            conn,
            sql_text(f'SELECT {element_columns} FROM elements WHERE "threadId" IN :ids').bindparams(
                bindparam("ids", expanding=True)
            ),
            ids,
        )
        for element in elements:
            threads[element["threadId"]]["elements"].append(await self._element_dict(element))  # type: ignore[union-attr]
        return list(threads.values())

    async def list_threads(self, pagination: Pagination, filters: ThreadFilter) -> PaginatedResponse[ThreadDict]:
        """The threads of ``filters.userId`` only, most recently active first; ``filters.search``
        matches the name (case-insensitive), ``filters.feedback`` keeps threads with such a vote."""
        await self.flush_writes()
        if not filters.userId:
            raise ValueError("list_threads needs filters.userId")
        where = 't."userId" = :user_id'
        params: dict[str, Any] = {"user_id": filters.userId, "limit": self._limit()}
        if filters.feedback is not None:
            where += """ AND EXISTS (SELECT 1 FROM feedbacks f JOIN steps s ON s."id" = f."forId"
                                     WHERE s."threadId" = t."id" AND f."value" = :feedback)"""
            params["feedback"] = int(filters.feedback)
        async with self.reading() as conn:
            rows = await self._thread_rows(conn, where, params)
        if filters.search:
            needle = filters.search.casefold()
            rows = [row for row in rows if needle in (row["name"] or "").casefold()]
        start = 0
        if pagination.cursor:
            start = next((i + 1 for i, row in enumerate(rows) if row["id"] == pagination.cursor), 0)
        page = rows[start : start + pagination.first]
        return PaginatedResponse(
            pageInfo=PageInfo(
                hasNextPage=len(rows) > start + pagination.first,
                startCursor=page[0]["id"] if page else None,
                endCursor=page[-1]["id"] if page else None,
            ),
            data=[_listed(row) for row in page],
        )

    async def delete_thread(self, thread_id: str) -> None:
        """Remove the thread, its steps, feedback and elements, then its files, then tell
        ``on_thread_deleted``. Rows go first: a file left by a failed removal is an orphan, never a
        row pointing at nothing."""
        await self.flush_writes()
        params = {"id": thread_id}
        async with self.transaction() as conn:
            found = await self._rows(conn, 'SELECT "metadata" FROM threads WHERE "id" = :id', params)
            keys = [
                row["objectKey"]
                for row in await self._rows(conn, 'SELECT "objectKey" FROM elements WHERE "threadId" = :id', params)
                if row["objectKey"]
            ]
            await conn.execute(
                sql_text(
                    """DELETE FROM feedbacks WHERE "threadId" = :id
                       OR "forId" IN (SELECT "id" FROM steps WHERE "threadId" = :id)"""
                ),
                params,
            )
            for table, column in (
                ("elements", "threadId"),
                ("steps", "threadId"),
                ("weaver_shares", "threadId"),  # a deleted chat's links answer "not found"
                ("threads", "id"),
            ):
                await conn.execute(sql_text(f'DELETE FROM {table} WHERE "{column}" = :id'), params)
        self._forget_thread(thread_id)
        await self._delete_files(keys)
        if found and self.on_thread_deleted is not None:
            try:
                result = self.on_thread_deleted(thread_id, dict(found[0]["metadata"] or {}))
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("on_thread_deleted failed for thread %s", thread_id)

    def _forget_thread(self, thread_id: str) -> None:
        """Drop what of the deleted thread waits to be stored, and remember it as deleted: rows of
        it in a store under way, or in the spool (read back by the next start), are not stored."""
        self._deleted_threads[thread_id] = None
        while len(self._deleted_threads) > DELETED_KEPT:
            del self._deleted_threads[next(iter(self._deleted_threads))]
        for key in self._writes.pending_keys():
            if thread_of(key) == thread_id:
                self._writes.discard(key)
        if self._writes.failing_since is not None or self._writes.spooled:
            self._writes.add(DELETED_THREAD + thread_id, {})  # to the spool, with the rows it voids

    def _stored_threads(self, rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """``rows`` without those of deleted threads (and without the tombstones themselves)."""
        for key in rows:
            if key.startswith(DELETED_THREAD):
                self._deleted_threads[key[len(DELETED_THREAD) :]] = None
        return {
            key: values
            for key, values in rows.items()
            if not key.startswith(DELETED_THREAD) and thread_of(key) not in self._deleted_threads
        }
