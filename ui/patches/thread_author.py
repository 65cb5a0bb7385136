"""``chainlit.server.is_thread_author``, wrapped: another user's chat is forbidden (403), not
"unauthorized" (401, which tells a signed-in user to sign in again). Chainlit's thread routes check
authorship through this one function, looked up in ``chainlit.server``'s namespace at each call."""

from __future__ import annotations


def install() -> None:
    import chainlit.server as server
    from fastapi import HTTPException

    original = server.is_thread_author
    if getattr(original, "weaver_patched", False):
        return

    async def is_thread_author(username: str, thread_id: str) -> bool:
        try:
            return bool(await original(username, thread_id))
        except HTTPException as exc:
            if exc.status_code == 401:
                raise HTTPException(status_code=403, detail="This chat belongs to someone else.") from None
            raise

    is_thread_author.weaver_patched = True  # type: ignore[attr-defined]
    server.is_thread_author = is_thread_author  # type: ignore[assignment]
