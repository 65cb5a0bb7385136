"""Echo: answers whoever addressed it with their own message (``echo.decorator`` around it).

TaskWeaver's smallest role, useful to check that a registered role is offered and answers; it
calls no model, so it works the same with any backend.
"""

from __future__ import annotations

from core.memory import Post
from core.roles.context import RoundContext
from core.roles.ext import ExtRole


class Echo(ExtRole):
    def reply(self, ctx: RoundContext) -> Post:
        incoming = ctx.last_post
        decorator = self.setting("decorator", "")
        proxy = ctx.emitter.post_proxy(ctx.round.id, Post(send_from=self.alias))
        proxy.update_message(f"{decorator}{incoming.message}{decorator}", is_end=True)
        proxy.update_send_to(str(incoming.send_from))
        return proxy.end()
