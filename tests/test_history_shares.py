"""Share links in the history database (``ui.history.shares``), on SQLite and PostgreSQL: a link is
unguessable, one live link per chat, revoking keeps the row (so the link can say "revoked"), and
deleting the chat deletes its links."""

from __future__ import annotations

import uuid

import pytest

from tests.test_history import DB, db, new_user, pg_cluster, run  # noqa: F401  (fixtures)
from ui.history import WeaverDataLayer

pytestmark = pytest.mark.timeout(120)


def test_links_are_made_found_revoked_and_deleted_with_their_chat(db: DB) -> None:  # noqa: F811
    async def scenario(layer: WeaverDataLayer) -> None:
        alice = await new_user(layer, "alice")
        thread_id = str(uuid.uuid4())
        await layer.update_thread(thread_id, name="shared", user_id=alice.id)

        link = await layer.create_share(thread_id, "alice")
        assert len(link.token) == 32 and not link.revoked and link.owner == "alice"
        assert await layer.create_share(thread_id, "alice") == link, "one live link per chat"
        assert await layer.share_link(link.token) == link
        assert await layer.live_share(thread_id) == link
        assert await layer.share_link(link.token[:-1] + ("A" if link.token[-1] != "A" else "B")) is None

        assert await layer.revoke_shares(thread_id) == [link.token]
        revoked = await layer.share_link(link.token)
        assert revoked is not None and revoked.revoked and revoked.thread_id == thread_id
        assert await layer.live_share(thread_id) is None
        assert await layer.revoke_shares(thread_id) == []

        again = await layer.create_share(thread_id, "alice")
        assert again.token != link.token and not again.revoked
        await layer.delete_thread(thread_id)
        assert await layer.share_link(again.token) is None and await layer.share_link(link.token) is None

    run(db, scenario)
