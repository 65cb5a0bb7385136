"""What the shipped model-driven roles share: a prompt from their folder's ``prompt.yaml`` and one
run of code in the session's sandboxed kernel, reported back to the Planner.

The prompt file's keys (Jinja2): ``system`` (variables: files, plugins, datasets, reply_format),
``reask`` (problem, reply_format), ``incoming`` (sender, message) and ``execution_result`` (result).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from core import metrics
from core.events import PostEventProxy
from core.memory import AttachmentType, Post, PostStatus, Round
from core.roles.approval_wait import approved_code
from core.roles.context import RoundContext
from core.roles.ext import ExtRole, role_prompt
from core.roles.prompts import Message, RolePrompt
from core.roles.prompts.history import recent_posts
from core.roles.prompts.templates import PromptTemplates
from core.roles.protocol import PLANNER, ReplyContract

PROMPT_KEYS = ("system", "reask", "incoming", "execution_result")


def folder_templates(role_file: Path) -> PromptTemplates:
    """A code role's ``prompt.yaml`` (its system prompt, re-ask, incoming and result turns)."""
    return role_prompt(role_file, PROMPT_KEYS)


def _listing(items: list[str] | str) -> str:
    text = items if isinstance(items, str) else ", ".join(items)
    return text or "(none)"


class WorkerPrompt(RolePrompt):
    """Instructions from the Planner, the role's own answers (``turn``) and each run's result."""

    def __init__(self, alias: str, templates: PromptTemplates, contract: ReplyContract, turn: Callable[[Post], str]):
        super().__init__(templates, contract)
        self.alias = alias
        self.turn = turn

    def messages(self, history: list[Round], current: Round, files: list[str], plugins: str) -> list[Message]:
        system = self._system(files=_listing(files), plugins=_listing(plugins))
        return [system, *self._turns(recent_posts(history, current))]

    def _turns(self, posts: list[Post]) -> list[Message]:
        messages: list[Message] = []
        for post in posts:
            if post.send_from == PLANNER and post.send_to == self.alias:
                messages.append(self._incoming(PLANNER, post.message))
            elif post.send_from == self.alias:
                messages.append({"role": "assistant", "content": self.turn(post)})
                if post.get_attachment(AttachmentType.execution_status):
                    result = self.templates.render("execution_result", result=post.message)
                    messages.append({"role": "user", "content": result})
        return messages


class KernelWorker(ExtRole):
    """A role whose model's answer becomes code run once in the session's kernel (no revisions)."""

    prompt: WorkerPrompt

    def ask(self, ctx: RoundContext, hints: dict[str, Any]) -> tuple[PostEventProxy, Any]:
        messages = self.prompt.messages(ctx.history, ctx.round, ctx.cwd_files(), self.deps.plugins_prompt())
        return self.ask_model(ctx, messages, hints)

    def run(
        self, ctx: RoundContext, proxy: PostEventProxy, code: str, check: Callable[[str], list[str]] | None = None
    ) -> Post:
        """Run ``code`` in the sandboxed kernel; its status and output go back to the Planner. With
        code approval on (``code_interpreter.require_confirmation`` or the chat's choice), the user
        answers first, as for the CodeInterpreter; an edit is checked by ``check`` like the model's."""
        if ctx.approvals is not None:
            approved = self._approved(ctx, proxy, code)
            if approved is None:
                return proxy.end()
            problems = check(approved) if check is not None and approved != code else []
            if problems:
                return self.refuse(proxy, "Your edited code was not run:\n" + "\n".join(problems))
            code = approved
        executor = self.deps.executor
        if not executor.ready:
            proxy.update_status(PostStatus.starting_kernel)
        limits = self.config.execution
        with ctx.tracing.span("weaver.execution", {"weaver.kernel.cold": not executor.ready}):
            result = executor.execute(
                code,
                session_vars=dict(ctx.session_vars),
                cancel=ctx.cancel,
                on_running=lambda: proxy.update_status(PostStatus.executing_code),
                on_queue=proxy.kernel_queue,
            )
        metrics.code_executed(result.status.value)
        summary = result.summary(limits.max_output_chars, limits.max_artifacts)
        proxy.update_attachment(result.status, AttachmentType.execution_status)
        proxy.update_attachment(summary, AttachmentType.execution_result, extra=result.outputs(limits.max_output_chars))
        if not result.is_success:
            ctx.code_failures += 1
        proxy.update_message(summary, is_end=True)
        proxy.update_send_to(PLANNER)
        return proxy.end()

    def _approved(self, ctx: RoundContext, proxy: PostEventProxy, code: str) -> str | None:
        """The code to run after the user's answer, or None (nothing runs; the round ends saying why)."""
        assert ctx.approvals is not None
        timeout = self.config.code_interpreter.confirmation_timeout
        return approved_code(ctx.approvals, proxy, code, timeout, ctx.cancel)

    def refuse(self, proxy: PostEventProxy, message: str) -> Post:
        """Nothing ran: the reason goes back to the Planner."""
        proxy.update_message(message, is_end=True)
        proxy.update_send_to(PLANNER)
        return proxy.end()
