"""The Planner: plans the user's request, delegates to workers, and answers the user."""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from core.events import PostEventProxy
from core.llm.json_stream import FieldEvent
from core.memory import AttachmentType, Post
from core.roles.base import FieldRenderer, Role, StreamedField
from core.roles.context import RoundContext
from core.roles.prompts import PlannerPrompt
from core.roles.protocol import CODE_INTERPRETER, PLANNER, USER, PlannerReply

CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code_blocks(text: str) -> list[str]:
    return [block.strip("\n") for block in CODE_BLOCK.findall(text) if block.strip()]


class _PlanField(StreamedField):
    """Plan items stream as a numbered list, a line per item as each completes."""

    def __init__(self) -> None:
        super().__init__(AttachmentType.plan)
        self.count = 0

    def __call__(self, proxy: PostEventProxy, event: FieldEvent) -> None:
        if event.kind != "item":  # a plan written as one string streams like any text field
            super().__call__(proxy, event)
            return
        self.count += 1
        proxy.update_attachment(f"{self.count}. {event.value}\n", self.type, self.attachment_id, is_end=False)


def _render_send_to(proxy: PostEventProxy, event: FieldEvent) -> None:
    if event.kind == "end" and isinstance(event.value, str):
        proxy.update_send_to(event.value)


def _render_message(proxy: PostEventProxy, event: FieldEvent) -> None:
    if event.kind == "start":
        proxy.update_message("", is_end=False)
    elif event.kind == "chunk":
        proxy.update_message(event.text, is_end=False)
    elif event.kind == "end":
        proxy.update_message("", is_end=True)


class Planner(Role):
    alias = PLANNER

    def __init__(
        self,
        *args: Any,
        workers: tuple[str, ...] = (CODE_INTERPRETER,),
        plugins_prompt: Callable[[], str] = lambda: "",
        intros: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        """``workers`` and their ``intros`` come from the role registry: what the prompt lists and
        the ``send_to`` values the reply may take."""
        super().__init__(*args, **kwargs)
        self.workers = workers
        self.prompt = PlannerPrompt(self.config, workers, intros or {})
        self.plugins_prompt = plugins_prompt

    def example_roles(self) -> set[str]:
        return {*self.workers, PLANNER, USER}

    def new_renderers(self) -> dict[str, FieldRenderer]:
        return {
            "thought": StreamedField(AttachmentType.thought),
            "plan": _PlanField(),
            "current_plan_step": StreamedField(AttachmentType.current_plan_step),
            "send_to": _render_send_to,
            "message": _render_message,
        }

    def reply(self, ctx: RoundContext) -> Post:
        self.use_examples(ctx)
        self.compress_history(ctx)
        self.use_experience(ctx, ctx.round.user_query)
        incoming = ctx.last_post
        messages = self.prompt.messages(ctx.history, ctx.round, ctx.cwd_files(), self.plugins_prompt())
        proxy, reply = self.ask_model(ctx, messages, self._hints(ctx, incoming))
        self._complete(proxy, reply)
        return proxy.end()

    def _hints(self, ctx: RoundContext, incoming: Post) -> dict[str, Any]:
        """The situation as data, for the offline backend (it does not read prose)."""
        if incoming.send_from == USER:
            return {
                "stage": "request",
                "code_blocks": extract_code_blocks(incoming.message),
                "files_added": list(ctx.files_added),
                "workers": list(self.workers),
                "request": incoming.message,
            }
        return {
            "stage": "worker_reply",
            "worker": incoming.send_from,
            "worker_message": incoming.message,
            "execution_status": incoming.first(AttachmentType.execution_status),
            "artifacts": incoming.first(AttachmentType.artifact_paths, []),
        }

    @staticmethod
    def _complete(proxy: PostEventProxy, reply: PlannerReply) -> None:
        """Fill in what streaming did not deliver (an answer the streaming parser could not follow)."""
        post = proxy.post
        if not post.get_attachment(AttachmentType.plan) and reply.plan:
            numbered = "".join(f"{i}. {step}\n" for i, step in enumerate(reply.plan, 1))
            proxy.update_attachment(numbered, AttachmentType.plan)
        if post.send_to != reply.send_to:
            proxy.update_send_to(reply.send_to)
        if post.message != reply.message:
            proxy.replace_message(reply.message)
