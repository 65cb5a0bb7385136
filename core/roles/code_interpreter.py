"""The CodeInterpreter: has its model write Python, runs it in the session's kernel, retries on errors."""

from __future__ import annotations

from typing import Any, Callable

from core.cancel import RoundCancelled
from core.events import PostEventProxy
from core.execution.kernel import KernelExecutor
from core.llm.json_stream import FieldEvent
from core.memory import AttachmentType, Post, PostStatus
from core.roles.base import FieldRenderer, Role, StreamedField
from core.roles.context import RoundContext
from core.roles.planner import extract_code_blocks
from core.roles.prompts import CodePrompt
from core.roles.protocol import CODE_INTERPRETER, PLANNER


class _ReplyContentField(StreamedField):
    """Code streams into a ``reply_content`` attachment; a text reply streams into the message."""

    def __init__(self) -> None:
        super().__init__(AttachmentType.reply_content)
        self.reply_type = "python"

    def set_type(self, proxy: PostEventProxy, event: FieldEvent) -> None:
        if event.kind == "end" and isinstance(event.value, str):
            self.reply_type = event.value
            proxy.update_attachment(event.value, AttachmentType.reply_type)

    def __call__(self, proxy: PostEventProxy, event: FieldEvent) -> None:
        if self.reply_type != "text":
            super().__call__(proxy, event)
        elif event.kind == "chunk":
            proxy.update_message(event.text, is_end=False)
        elif event.kind == "end":
            proxy.update_message("", is_end=True)


class CodeInterpreter(Role):
    alias = CODE_INTERPRETER

    def __init__(
        self, *args: Any, executor: KernelExecutor, plugins_prompt: Callable[[], str] = lambda: "", **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.executor = executor
        self.prompt = CodePrompt(self.config)
        self.plugins_prompt = plugins_prompt

    def new_renderers(self) -> dict[str, FieldRenderer]:
        content = _ReplyContentField()
        return {
            "thought": StreamedField(AttachmentType.thought),
            "reply_type": content.set_type,
            "reply_content": content,
        }

    def reply(self, ctx: RoundContext) -> Post:
        incoming = ctx.last_post
        messages = self.prompt.messages(ctx.history, ctx.round, ctx.cwd_files(), self.plugins_prompt())
        proxy, reply = self.ask_model(ctx, messages, self._hints(ctx, incoming))
        if reply.reply_type == "text":
            if proxy.post.message != reply.reply_content:
                proxy.replace_message(reply.reply_content)
            proxy.update_send_to(PLANNER)
            return proxy.end()
        if not proxy.post.get_attachment(AttachmentType.reply_content):
            proxy.update_attachment(reply.reply_content, AttachmentType.reply_content)
        return self._run(ctx, proxy, reply.reply_content)

    def _run(self, ctx: RoundContext, proxy: PostEventProxy, code: str) -> Post:
        if not self.executor.ready:  # say why this wait is longer; execute() starts the kernel first
            proxy.update_status(PostStatus.starting_kernel)
        result = self.executor.execute(
            code,
            session_vars=dict(ctx.session_vars),
            cancel=ctx.cancel,
            on_running=lambda: proxy.update_status(PostStatus.executing_code),
        )
        proxy.update_attachment(result.status, AttachmentType.execution_status)
        limits = self.config.execution
        summary = result.summary(limits.max_output_chars, limits.max_artifacts)
        proxy.update_attachment(summary, AttachmentType.execution_result)
        for table in result.tables[: limits.max_artifacts]:
            table = table.clipped(limits.max_table_rows, limits.max_table_columns)
            proxy.update_attachment(table.as_payload(), AttachmentType.table)
        if result.artifacts:
            proxy.update_attachment(
                [
                    {"name": a.name, "path": str(a.path), "type": a.type}
                    for a in result.artifacts[: limits.max_artifacts]
                ],
                AttachmentType.artifact_paths,
            )
        if result.cancelled:
            proxy.update_send_to(PLANNER)
            ctx.round.add_post(proxy.end())
            raise RoundCancelled("the round was cancelled while code was running")
        retry = (
            not result.is_success
            and not result.timed_out
            and ctx.code_failures < self.config.code_interpreter.max_retry_count
        )
        if not result.is_success:
            ctx.code_failures += 1
        if retry:
            proxy.update_attachment(
                f"The execution failed (attempt {ctx.code_failures}); the code will be revised.",
                AttachmentType.revise_message,
            )
        proxy.update_message(summary, is_end=True)
        proxy.update_send_to(CODE_INTERPRETER if retry else PLANNER)
        return proxy.end()

    def _hints(self, ctx: RoundContext, incoming: Post) -> dict[str, Any]:
        """The situation as data, for the offline backend."""
        request = next(
            (
                p.message
                for p in reversed(ctx.round.post_list)
                if p.send_from == PLANNER and p.send_to == CODE_INTERPRETER
            ),
            incoming.message,
        )
        return {
            "code_blocks": extract_code_blocks(request),
            "files": list(ctx.files_added),
            "previous_error": incoming.message if incoming.send_from == CODE_INTERPRETER else None,
        }
