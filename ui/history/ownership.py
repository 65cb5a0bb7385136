"""Chainlit's HTTP routes that write feedback and elements by id refuse another user's rows (403).

``PUT``/``DELETE /feedback`` check only that someone is signed in, and ``PUT``/``DELETE
/project/element`` that the socket session named is the caller's; then they write the step,
feedback, element and chat ids the request body names. So anyone signed in could vote on,
re-point or delete another user's feedback, and overwrite or delete another user's elements and
their files. The data layer cannot tell who asks (an HTTP route runs in no chat's context), but
every one of these routes asks Chainlit's ``get_current_user`` dependency who the caller is:
``install_ownership_checks`` overrides that dependency (``app.dependency_overrides``, FastAPI's
public hook) with one that answers the same and, when the route is one of these, first checks
that what the body names belongs to that user. Refused: 403 with a plain message, before the
route runs, so nothing is written.

What the other routes and events that reach the data layer already check (Chainlit 2.12):
reading, renaming, sharing and deleting a chat (``is_thread_author``, made a 403 by
``ui.guards``); listing chats (the caller's own user id); reading an element (``is_thread_author``
and the element's chat); a shared chat (read only); the socket's writes (steps, elements, chat
metadata, favourites) go to the session's own chat, which Chainlit checks at connect; a step is
deleted only from the chat of the session that asks (``ui.history.steps``).
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Union

from chainlit.auth import get_current_user, reuseable_oauth
from fastapi import Depends, HTTPException
from starlette.requests import Request

from ui.history.layer import WeaverDataLayer

logger = logging.getLogger("weaver.ui.history")

LayerSource = Union[WeaverDataLayer, Callable[[], Union[WeaverDataLayer, None]]]
Check = Callable[[WeaverDataLayer, str, Any], Awaitable[Union[str, None]]]

NOT_YOUR_MESSAGE = "You can only give feedback on messages in your own chats."
NOT_YOUR_FEEDBACK = "This feedback is not on one of your messages."
NOT_YOUR_CHAT = "This element is not in one of your chats."


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


async def check_feedback_write(layer: WeaverDataLayer, caller: str, body: Any) -> str | None:
    """``PUT /feedback``: the step must be in the caller's chat, and a feedback id that is already
    stored must be the caller's, on that same step. Returns the refusal, or None."""
    feedback = body.get("feedback") if isinstance(body, dict) else None
    if not isinstance(feedback, dict):
        return NOT_YOUR_MESSAGE
    step_id = _text(feedback.get("forId"))
    if not step_id or await layer.step_author(step_id) != caller:
        return NOT_YOUR_MESSAGE
    feedback_id = _text(feedback.get("id"))
    if feedback_id:
        target = await layer.feedback_target(feedback_id)
        if target is not None and (target.author != caller or target.step_id != step_id):
            return NOT_YOUR_FEEDBACK
    return None


async def check_feedback_delete(layer: WeaverDataLayer, caller: str, body: Any) -> str | None:
    """``DELETE /feedback``: the feedback must exist and be on a step of the caller's chat."""
    feedback_id = _text(body.get("feedbackId")) if isinstance(body, dict) else ""
    target = await layer.feedback_target(feedback_id) if feedback_id else None
    if target is None or target.author != caller:
        return NOT_YOUR_FEEDBACK
    return None


async def check_element_write(layer: WeaverDataLayer, caller: str, body: Any) -> str | None:
    """``PUT``/``DELETE /project/element``: the element's chat must be the caller's (the layer
    writes and deletes an element only within the chat named, so naming your own chat cannot
    reach another's element)."""
    element = body.get("element") if isinstance(body, dict) else None
    thread_id = _text(element.get("threadId")) if isinstance(element, dict) else ""
    if not thread_id or await layer.get_thread_author(thread_id) != caller:
        return NOT_YOUR_CHAT
    return None


def _checks() -> dict[Callable[..., Any], Check]:
    """Chainlit's route functions, found in a request's scope as its ``endpoint``, and their checks."""
    import chainlit.server as server

    return {
        server.update_feedback: check_feedback_write,
        server.delete_feedback: check_feedback_delete,
        server.update_thread_element: check_element_write,
        server.delete_thread_element: check_element_write,
    }


def caller_with_ownership_checks(source: LayerSource) -> Callable[..., Awaitable[Any]]:
    """A stand-in for Chainlit's ``get_current_user``: the same user, after the ownership check
    of the route being called (if it has one)."""
    checks = _checks()

    async def current_user(request: Request, token: str = Depends(reuseable_oauth)) -> Any:
        user = await get_current_user(token)
        endpoint = request.scope.get("endpoint")
        check = checks.get(endpoint) if endpoint is not None else None
        if check is None:
            return user
        layer = source if isinstance(source, WeaverDataLayer) else source()
        if layer is None:
            raise HTTPException(status_code=503, detail="History is not available")
        caller = str(getattr(user, "identifier", "") or "")
        try:
            body = await request.json()
        except ValueError:
            body = None
        refusal = await check(layer, caller, body)
        if refusal is not None:
            logger.warning("refused %s %s for %r: %s", request.method, request.url.path, caller, refusal)
            raise HTTPException(status_code=403, detail=refusal)
        return user

    return current_user


def install_ownership_checks(app: Any, data_layer: LayerSource) -> None:
    """Check ownership on Chainlit's feedback and element routes of ``app`` (Chainlit's FastAPI
    app). ``data_layer`` may be the layer or a function returning it (None while it is not open
    yet: those routes answer 503). Safe to call twice."""
    app.dependency_overrides[get_current_user] = caller_with_ownership_checks(data_layer)
