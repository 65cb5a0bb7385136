"""Feedback (a thumbs up or down, and a comment, on one step), and who owns what.

Chainlit's ``upsert_feedback`` writes whatever step id and feedback id the browser sends, and an
existing id means "overwrite that row", whoever's it is. Here the feedback's thread is the step's
own (never the one the request names) and an existing feedback is only ever changed for the step
it was given on. Whether the caller may touch the step or the feedback at all is asked by
``ui.history.ownership`` (the HTTP routes know the caller; the layer does not), through
``step_author`` and ``feedback_target``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from chainlit.types import Feedback

from ui.history.store import HistoryStore, sql_text


@dataclass(frozen=True)
class FeedbackTarget:
    """What a stored feedback is on: its step, and the owner of that step's chat ("" if none)."""

    step_id: str
    author: str


@dataclass(frozen=True)
class GivenFeedback:
    """One feedback as the admin page lists it: the thumb, the comment, and the step it is on."""

    value: int  # 1: thumbs up, 0: thumbs down
    comment: str
    step_text: str
    step_name: str
    chat_id: str
    chat_name: str
    user: str
    given_on: str  # the step's time


class Feedbacks(HistoryStore):
    """Chainlit's feedback methods, and the ownership questions the feedback routes ask."""

    async def step_author(self, step_id: str) -> str | None:
        """The identifier of the user whose chat holds the step: "" for a chat without an owner,
        None when there is no such step (pending steps are stored first)."""
        await self.flush_writes()
        async with self.reading() as conn:
            rows = await self._rows(
                conn,
                """SELECT t."userIdentifier" FROM steps s LEFT JOIN threads t ON t."id" = s."threadId"
                   WHERE s."id" = :id""",
                {"id": step_id},
            )
        return str(rows[0]["userIdentifier"] or "") if rows else None

    async def feedback_target(self, feedback_id: str) -> FeedbackTarget | None:
        """The step a stored feedback is on and that chat's owner; None when there is no such feedback."""
        async with self.reading() as conn:
            rows = await self._rows(
                conn,
                """SELECT f."forId", t."userIdentifier" FROM feedbacks f
                   LEFT JOIN steps s ON s."id" = f."forId" LEFT JOIN threads t ON t."id" = s."threadId"
                   WHERE f."id" = :id""",
                {"id": feedback_id},
            )
        if not rows:
            return None
        return FeedbackTarget(step_id=str(rows[0]["forId"]), author=str(rows[0]["userIdentifier"] or ""))

    async def recent_feedback(self, limit: int = 100) -> list[GivenFeedback]:
        """The feedback on the newest steps first, with each step's text: what admins read."""
        await self.flush_writes()
        async with self.reading() as conn:
            rows = await self._rows(
                conn,
                """SELECT f."value", f."comment", s."output", s."name", s."createdAt", f."threadId",
                          t."name" AS "threadName", t."userIdentifier"
                   FROM feedbacks f LEFT JOIN steps s ON s."id" = f."forId"
                   LEFT JOIN threads t ON t."id" = f."threadId"
                   ORDER BY s."createdAt" DESC LIMIT :limit""",
                {"limit": limit},
            )
        return [
            GivenFeedback(
                value=int(row["value"] or 0),
                comment=str(row["comment"] or ""),
                step_text=str(row["output"] or ""),
                step_name=str(row["name"] or ""),
                chat_id=str(row["threadId"] or ""),
                chat_name=str(row["threadName"] or ""),
                user=str(row["userIdentifier"] or ""),
                given_on=str(row["createdAt"] or ""),
            )
            for row in rows
        ]

    async def upsert_feedback(self, feedback: Feedback) -> str:
        """Store the feedback on its step (in the step's chat); returns its id. A feedback id that
        is already stored for another step changes nothing."""
        await self.flush_writes()
        feedback_id = feedback.id or str(uuid.uuid4())
        async with self.transaction() as conn:
            found = await self._rows(conn, 'SELECT "threadId" FROM steps WHERE "id" = :id', {"id": feedback.forId})
            if not found:
                raise ValueError("there is no such message to give feedback on")
            await conn.execute(
                sql_text(
                    'INSERT INTO feedbacks ("id", "forId", "threadId", "value", "comment") '
                    "VALUES (:id, :for_id, :thread_id, :value, :comment) "
                    'ON CONFLICT ("id") DO UPDATE SET "value" = EXCLUDED."value", '
                    '"comment" = COALESCE(EXCLUDED."comment", feedbacks."comment") '
                    'WHERE feedbacks."forId" = EXCLUDED."forId"'
                ),
                {
                    "id": feedback_id,
                    "for_id": feedback.forId,
                    "thread_id": found[0]["threadId"],
                    "value": int(feedback.value),
                    "comment": feedback.comment,
                },
            )
        feedback.id = feedback_id
        return feedback_id

    async def delete_feedback(self, feedback_id: str) -> bool:
        async with self.transaction() as conn:
            await conn.execute(sql_text('DELETE FROM feedbacks WHERE "id" = :id'), {"id": feedback_id})
        return True
