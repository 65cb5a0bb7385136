"""The CodeInterpreter: has its model write Python, runs it in the session's kernel, retries on errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from core import metrics
from core.approval import ApprovalGate
from core.cancel import RoundCancelled
from core.events import PostEventProxy
from core.execution.kernel import KernelExecutor
from core.execution.live_output import LiveOutput
from core.llm.json_stream import FieldEvent
from core.memory import AttachmentType, ExecutionStatus, Post, PostStatus
from core.plugins.catalog import describe_plugins
from core.plugins.selection import PluginSelector, Selection
from core.plugins.spec import PluginSpec
from core.roles.approval_wait import approved_code
from core.roles.base import FieldRenderer, Role, StreamedField
from core.roles.context import RoundContext
from core.roles.planner import extract_code_blocks
from core.roles.prompts import CodePrompt
from core.roles.protocol import CODE_INTERPRETER, PLANNER
from core.roles.verification import describe_rules, verify_code

USER_EDITED_NOTE = "Note: the user edited this code before it ran; it ran as shown.\n"


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
        self,
        *args: Any,
        executor: KernelExecutor,
        plugins_prompt: Callable[[], str] = lambda: "",
        plugin_specs: Callable[[], list[PluginSpec]] = list,
        plugin_selector: PluginSelector | None = None,
        **kwargs: Any,
    ) -> None:
        """``plugin_specs`` and ``plugin_selector``: with auto plugin selection on, the prompt lists
        the plugins the selector picks from ``plugin_specs()`` instead of ``plugins_prompt()``."""
        super().__init__(*args, **kwargs)
        self.executor = executor
        self.prompt = CodePrompt(self.config)
        self.plugins_prompt = plugins_prompt
        self.plugin_specs = plugin_specs
        self.plugin_selector = plugin_selector if plugin_selector is not None and plugin_selector.enabled else None

    def new_renderers(self) -> dict[str, FieldRenderer]:
        content = _ReplyContentField()
        return {
            "thought": StreamedField(AttachmentType.thought),
            "reply_type": content.set_type,
            "reply_content": content,
        }

    def reply(self, ctx: RoundContext) -> Post:
        self.use_examples(ctx)
        self.compress_history(ctx)
        incoming = ctx.last_post
        self.use_experience(ctx, f"{ctx.round.user_query}\n{incoming.message}")
        selection = self._select_plugins(ctx)
        plugins = self.plugins_prompt() if selection is None else describe_plugins(selection.offered)
        messages = self.prompt.messages(ctx.history, ctx.round, ctx.cwd_files(), plugins)
        settings = self.config.code_interpreter
        if settings.code_verification_on:  # tell the model the rules its code is checked against
            rules = describe_rules(settings.allowed_modules, settings.blocked_functions)
            messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n{rules}"}
        proxy, reply = self.ask_model(ctx, messages, self._hints(ctx, incoming))
        if selection is not None:  # which plugins the model was shown, for every UI (no model needed)
            proxy.update_attachment(selection.names, AttachmentType.plugin_selection, extra=selection.details())
        if reply.reply_type == "text":
            if proxy.post.message != reply.reply_content:
                proxy.replace_message(reply.reply_content)
            proxy.update_send_to(PLANNER)
            return proxy.end()
        if not proxy.post.get_attachment(AttachmentType.reply_content):
            proxy.update_attachment(reply.reply_content, AttachmentType.reply_content)
        if settings.code_verification_on and not self._verified(ctx, proxy, reply.reply_content):
            return proxy.end()
        code, note = reply.reply_content, ""
        if ctx.approvals is not None:
            approved = self._approved(ctx, ctx.approvals, proxy, code)
            if approved is None:  # cancelled, or nobody answered: nothing ran, the round ends saying so
                return proxy.end()
            if approved != code:
                # The user's cell meets the app's rules too: an approval is no way around them.
                if settings.code_verification_on and not self._verified(ctx, proxy, approved):
                    return proxy.end()
                code, note = approved, USER_EDITED_NOTE
        return self._run(ctx, proxy, code, note)

    def _select_plugins(self, ctx: RoundContext) -> Selection | None:
        """With auto plugin selection on: the plugins for this request (the user's request and the
        Planner's latest instruction), plus those the CodeInterpreter's code in this chat called."""
        if self.plugin_selector is None:
            return None
        specs = self.plugin_specs()
        if not specs:  # no plugins: nothing to choose, nothing to show
            return None
        posts = [p for r in ctx.history if r is not ctx.round for p in r.post_list] + ctx.round.post_list
        earlier = [
            str(p.first(AttachmentType.reply_content, ""))
            for p in posts
            if p.send_from == CODE_INTERPRETER and p.get_attachment(AttachmentType.reply_content)
        ]
        query = f"{ctx.round.user_query}\n{self._request(ctx, ctx.last_post)}"
        return self.plugin_selector.select(specs, query, earlier)

    def _approved(self, ctx: RoundContext, gate: ApprovalGate, proxy: PostEventProxy, code: str) -> str | None:
        """The code to run after the user's answer; an edit replaces the code in the post, so the
        round's memory holds what ran."""

        def replace(edited: str) -> None:
            content = next(a for a in proxy.post.attachment_list if a.type == AttachmentType.reply_content)
            proxy.replace_attachment(content, edited)

        timeout = self.config.code_interpreter.confirmation_timeout
        return approved_code(gate, proxy, code, timeout, ctx.cancel, on_edit=replace)

    def _verified(self, ctx: RoundContext, proxy: PostEventProxy, code: str) -> bool:
        """Check the code against the app's rules before it runs; on errors the post says why, the
        code is not run, and the model is asked to revise it (within max_retry_count)."""
        settings = self.config.code_interpreter
        errors = verify_code(code, settings.allowed_modules, settings.blocked_functions)
        if not errors:
            proxy.update_attachment("CORRECT", AttachmentType.verification)
            return True
        report = "\n".join(errors)
        proxy.update_attachment("INCORRECT", AttachmentType.verification)
        proxy.update_attachment(report, AttachmentType.code_error)
        # Not run; "failure" so the model reads this as a result to fix (and a resume skips it).
        proxy.update_attachment(ExecutionStatus.failure, AttachmentType.execution_status)
        retry = self.llm.revises_code() and ctx.code_failures < settings.max_retry_count
        ctx.code_failures += 1
        if retry:
            proxy.update_attachment(
                f"The code broke the app's verification rules (attempt {ctx.code_failures}); it will be revised.",
                AttachmentType.revise_message,
            )
        proxy.update_message(
            f"The code was not run: code verification found {len(errors)} problem(s).\n{report}", is_end=True
        )
        proxy.update_send_to(CODE_INTERPRETER if retry else PLANNER)
        return False

    def _run(self, ctx: RoundContext, proxy: PostEventProxy, code: str, note: str = "") -> Post:
        cold = not self.executor.ready
        if cold:  # say why this wait is longer; execute() starts the kernel first
            proxy.update_status(PostStatus.starting_kernel)
        limits = self.config.execution
        live = None
        if limits.live_output_s > 0:  # what the code prints shows while it runs, bounded like the result
            live = LiveOutput(proxy.execution_output, limits.live_output_s, limits.max_output_chars)
        with ctx.tracing.span("weaver.execution", {"weaver.kernel.cold": cold}) as span:
            result = self.executor.execute(
                code,
                session_vars=dict(ctx.session_vars),
                cancel=ctx.cancel,
                on_running=lambda: proxy.update_status(PostStatus.executing_code),
                on_queue=proxy.kernel_queue,
                live=live,
            )
            if span.is_recording():
                span.set_attributes(
                    {
                        "weaver.execution.outcome": result.status.value,
                        "weaver.execution.kernel_died": result.kernel_died,
                    }
                )
        metrics.code_executed(result.status.value)
        proxy.update_attachment(result.status, AttachmentType.execution_status)
        summary = result.summary(limits.max_output_chars, limits.max_artifacts)
        # The parts too (``extra``), for exports: the summary is worded for the model.
        proxy.update_attachment(summary, AttachmentType.execution_result, extra=result.outputs(limits.max_output_chars))
        for table in result.tables[: limits.max_artifacts]:
            table = table.clipped(limits.max_table_rows, limits.max_table_columns)
            proxy.update_attachment(table.as_payload(), AttachmentType.table)
        if result.artifacts:
            shown = result.artifacts[: limits.max_artifacts]
            # TaskWeaver's shape: a list of path strings (absolute, or names in the cwd without
            # use_local_uri); the details travel in the attachment's ``extra``.
            local = self.config.code_interpreter.use_local_uri
            proxy.update_attachment(
                [str(a.path) if local else _relative(a.path, self.executor.cwd) for a in shown],
                AttachmentType.artifact_paths,
                extra=[{"name": a.name, "path": str(a.path), "type": a.type} for a in shown],
            )
        if result.cancelled:
            proxy.update_send_to(PLANNER)
            ctx.round.add_post(proxy.end())
            raise RoundCancelled("the round was cancelled while code was running")
        retry = (
            not result.is_success
            and not result.timed_out
            and self.llm.revises_code()  # the offline backend runs code as written: the error goes back as is
            and ctx.code_failures < self.config.code_interpreter.max_retry_count
        )
        if not result.is_success:
            ctx.code_failures += 1
        if retry:
            proxy.update_attachment(
                f"The execution failed (attempt {ctx.code_failures}); the code will be revised.",
                AttachmentType.revise_message,
            )
        proxy.update_message(note + summary, is_end=True)
        proxy.update_send_to(CODE_INTERPRETER if retry else PLANNER)
        return proxy.end()

    def _hints(self, ctx: RoundContext, incoming: Post) -> dict[str, Any]:
        """The situation as data, for the offline backend."""
        request = self._request(ctx, incoming)
        return {
            "code_blocks": extract_code_blocks(request),
            "files": list(ctx.files_added),
            "previous_error": incoming.message if incoming.send_from == CODE_INTERPRETER else None,
        }

    @staticmethod
    def _request(ctx: RoundContext, incoming: Post) -> str:
        """The Planner's latest instruction to the CodeInterpreter in this round."""
        return next(
            (
                p.message
                for p in reversed(ctx.round.post_list)
                if p.send_from == PLANNER and p.send_to == CODE_INTERPRETER
            ),
            incoming.message,
        )


def _relative(path: Path, cwd: Path) -> str:
    """The artifact's path within the session's working folder (its name, for a file at the top)."""
    try:
        return str(Path(path).resolve().relative_to(Path(cwd).resolve()))
    except ValueError:
        return str(path)
