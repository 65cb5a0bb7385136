"""Steps (messages, and the parts of a round): written through the write-behind
(``ui.history.write_behind``), many chats' pending steps in one transaction.

A step written with an id that another thread's row already has (ids come from the browser)
changes nothing (``HistoryStore._upsert_many``). A step or thread whose thread id is not a
canonical UUID (all Chainlit ever makes) is refused before any write.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

from chainlit.context import context
from chainlit.data.utils import queue_until_user_message
from sqlalchemy import bindparam
from sqlalchemy.ext.asyncio import AsyncConnection

from ui.history.elements import ELEMENT_ROW
from ui.history.rows import STEP_COLUMNS, is_thread_id, step_dict
from ui.history.store import HistoryStore, lost_connection, sql_text
from ui.history.threads import THREAD_CHANGE, thread_of

if TYPE_CHECKING:
    from chainlit.step import StepDict

logger = logging.getLogger("weaver.ui.history")


class Steps(HistoryStore):
    """Chainlit's step methods, and the store the write-behind calls."""

    _adopted_threads: set[str]  # threads with rows taken over from a dead server's spool, not yet stored

    @queue_until_user_message()
    async def create_step(self, step_dict: StepDict) -> None:
        await self._write_step(step_dict)

    @queue_until_user_message()
    async def update_step(self, step_dict: StepDict) -> None:
        await self._write_step(step_dict)

    async def _write_step(self, step_dict: StepDict) -> None:
        """Queue the step's state (see ``write_behind``); a user's own message is stored at once, in
        the background."""
        thread_id = step_dict.get("threadId")
        if not is_thread_id(thread_id):
            logger.warning("refused to store step %.80r: thread id %.80r is not a UUID", step_dict.get("id"), thread_id)
            return
        values: dict[str, Any] = {c: step_dict.get(c) for c in STEP_COLUMNS if step_dict.get(c) is not None}
        if "showInput" in values:
            values["showInput"] = str(values["showInput"]).lower()
        values.setdefault("metadata", {})
        for column in ("metadata", "modes", "generation"):
            if column in values:
                values[column] = self._json_param(values[column])
        # Queued by chat and id: step ids come from the browser, and a step sent with the id of
        # another chat's step must not merge into that step's queued state (the store then keeps
        # each row in its own chat, as for a step already stored).
        key = f"{thread_id}/{values['id']}"
        if step_dict.get("type") == "user_message":
            self._writes.write_soon(key, values)
        else:
            self._writes.add(key, values)

    async def _store_pending(self, rows: dict[str, dict[str, Any]]) -> None:
        """One transaction: thread changes, the threads the steps belong to (created if new), then
        every step. Raises only when the database does not answer (the write-behind then keeps the
        rows and tries again); a row it refuses is logged and dropped."""
        for again in (False, True):
            try:
                await self._store_rows(rows)
                return
            except Exception as exc:
                if not await self.database_answers():
                    raise
                if again or not lost_connection(exc):
                    break
                # A pooled connection from before the database restarted: once more, on a new one.
        logger.warning("storing %d rows together failed; storing them one by one", len(rows), exc_info=True)
        for key, values in rows.items():  # one bad row must not cost everyone else their history
            try:
                await self._store_rows({key: values})
            except Exception as exc:
                if lost_connection(exc) or not await self.database_answers():
                    raise
                logger.exception("could not store %s", key)

    async def _store_rows(self, rows: dict[str, dict[str, Any]]) -> None:
        rows = self._stored_threads(rows)  # not those of chats deleted meanwhile
        created = await self.get_current_timestamp()
        async with self.transaction() as conn:
            adopted = {thread_of(key) for key in rows} & self._adopted_threads
            if adopted:
                rows = await self._without_lost_threads(conn, rows, adopted)
            changes = {k[len(THREAD_CHANGE) :]: v for k, v in rows.items() if k.startswith(THREAD_CHANGE)}
            elements = [v for k, v in rows.items() if k.startswith(ELEMENT_ROW)]
            steps = [v for k, v in rows.items() if not k.startswith((THREAD_CHANGE, ELEMENT_ROW))]
            # Every thread row first (a no-op where it exists), in one lock order for every replica.
            threads = sorted({*changes, *(str(values["threadId"]) for values in steps)})
            if threads:  # (none when only elements wait)
                await conn.execute(
                    sql_text(
                        'INSERT INTO threads ("id", "createdAt", "metadata") VALUES (:id, :created, :metadata) '
                        'ON CONFLICT ("id") DO NOTHING'
                    ),
                    [{"id": thread_id, "created": created, "metadata": "{}"} for thread_id in threads],
                )
            for thread_id, change in sorted(changes.items()):
                await self._change_thread(conn, thread_id, change)
            if steps:
                await self._upsert_many(conn, "steps", steps)
            if elements:
                await self._upsert_many(conn, "elements", elements)
        self._adopted_threads -= adopted

    async def _without_lost_threads(
        self, conn: AsyncConnection, rows: dict[str, dict[str, Any]], adopted: set[str]
    ) -> dict[str, dict[str, Any]]:
        """``rows`` without those of threads taken over from a dead server's spool that are gone
        from the database (deleted, by another server, while the spool waited), unless the rows
        create the thread with its owner (it began during the outage): else a deleted chat would
        come back, ownerless, with the steps it had."""
        found = await self._rows(
            conn,
            sql_text('SELECT "id" FROM threads WHERE "id" IN :ids').bindparams(bindparam("ids", expanding=True)),
            {"ids": sorted(adopted)},
        )
        existing = {row["id"] for row in found}
        lost = {t for t in adopted - existing if not rows.get(THREAD_CHANGE + t, {}).get("userId")}
        if not lost:
            return rows
        kept = {key: values for key, values in rows.items() if thread_of(key) not in lost}
        logger.warning(
            "history: %d row(s) of %d chat(s) deleted since a stopped server kept them are not stored",
            len(rows) - len(kept),
            len(lost),
        )
        return kept

    async def flush_writes(self, now: bool = False) -> bool:
        """Store the writes still pending (steps, thread changes); every read of the history calls it
        first. While the database fails: one try (at once when ``now``, as at shutdown), bounded by
        ``WEAVER_UI_HISTORY_WAIT_S``; False then, with every pending row in the spool file."""
        return await self._writes.flush(now)

    @queue_until_user_message()
    async def delete_step(self, step_id: str) -> None:
        """Delete the step, with its feedback and elements, if it is in the asking session's chat.
        Chainlit deletes by id alone, and a user's message has the id its browser chose: a message
        sent with another chat's step id, then removed (editing an earlier message removes the
        later ones), must not delete that chat's step."""
        await self.flush_writes()
        params = {"id": step_id, "chat": context.session.thread_id}  # queue_until_user_message made sure of a session
        async with self.transaction() as conn:
            found = await self._rows(conn, 'SELECT "threadId" FROM steps WHERE "id" = :id', params)
            if found and found[0]["threadId"] != params["chat"]:
                logger.warning("refused to delete step %.80r: it is not in chat %s", step_id, params["chat"])
                return
            in_chat = '"forId" = :id AND "threadId" = :chat'
            keys = [
                row["objectKey"]
                for row in await self._rows(conn, f'SELECT "objectKey" FROM elements WHERE {in_chat}', params)
                if row["objectKey"]
            ]
            if found:
                await conn.execute(sql_text('DELETE FROM feedbacks WHERE "forId" = :id'), params)
            await conn.execute(sql_text(f"DELETE FROM elements WHERE {in_chat}"), params)
            await conn.execute(sql_text('DELETE FROM steps WHERE "id" = :id AND "threadId" = :chat'), params)
        await self._delete_files(keys)

    async def get_step(self, step_id: str) -> Optional[StepDict]:
        await self.flush_writes()
        columns = ", ".join(f's."{c}"' for c in STEP_COLUMNS)
        async with self.reading() as conn:
            rows = await self._rows(
                conn,
                f"""SELECT {columns}, f."id" AS feedback_id, f."value" AS feedback_value,
                           f."comment" AS feedback_comment
                    FROM steps s LEFT JOIN feedbacks f ON f."forId" = s."id" WHERE s."id" = :id""",
                {"id": step_id},
            )
        return step_dict(rows[0]) if rows else None

    async def get_favorite_steps(self, user_id: str) -> list[StepDict]:
        await self.flush_writes()
        columns = ", ".join(f's."{c}"' for c in STEP_COLUMNS)
        async with self.reading() as conn:
            rows = await self._rows(
                conn,
                f"""SELECT {columns}, NULL AS feedback_id, NULL AS feedback_value, NULL AS feedback_comment
                    FROM steps s JOIN threads t ON t."id" = s."threadId"
                    WHERE t."userId" = :user_id ORDER BY s."createdAt" DESC NULLS LAST""",
                {"user_id": user_id},
            )
        return [step_dict(row) for row in rows if (row["metadata"] or {}).get("favorite") is True]
