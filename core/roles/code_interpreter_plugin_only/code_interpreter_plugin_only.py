"""CodeInterpreterPluginOnly: the model may only call the app's plugins; any other code is refused
with the reason and not run (as TaskWeaver's role, whose code is checked to hold only the calls).
"""

from __future__ import annotations

from typing import Any

from core.memory import AttachmentType, Post
from core.roles.base import FieldRenderer, StreamedField
from core.roles.code_interpreter_plugin_only.calls import plugin_call_problems
from core.roles.context import RoundContext
from core.roles.deps import RoleDeps
from core.roles.ext import RoleEntry
from core.roles.planner import extract_code_blocks
from core.roles.prompts.history import code_turn
from core.roles.protocol import CodeReply, ReplyContract
from core.roles.worker import KernelWorker, WorkerPrompt, folder_templates

REFUSED = "The code was not run: {alias} runs plugin calls only, and free code is refused.\n{problems}"


class CodeInterpreterPluginOnly(KernelWorker):
    def __init__(self, deps: RoleDeps, entry: RoleEntry) -> None:
        super().__init__(deps, entry)
        self.prompt = WorkerPrompt(self.alias, folder_templates(entry.file), ReplyContract(CodeReply), code_turn)

    def new_renderers(self) -> dict[str, FieldRenderer]:
        return {"thought": StreamedField(AttachmentType.thought)}

    def reply(self, ctx: RoundContext) -> Post:
        proxy, reply = self.ask(ctx, self._hints(ctx))
        if reply.reply_type == "text":
            return self.refuse(proxy, reply.reply_content)
        code = reply.reply_content
        proxy.update_attachment(code, AttachmentType.reply_content)
        plugins = {spec.name for spec in self.deps.plugin_specs()}
        problems = plugin_call_problems(code, plugins)
        if problems:
            proxy.update_attachment("INCORRECT", AttachmentType.verification)
            proxy.update_attachment("\n".join(problems), AttachmentType.code_error)
            return self.refuse(proxy, REFUSED.format(alias=self.alias, problems="\n".join(problems)))
        proxy.update_attachment("CORRECT", AttachmentType.verification)
        return self.run(ctx, proxy, code, check=lambda edited: plugin_call_problems(edited, plugins))

    def _hints(self, ctx: RoundContext) -> dict[str, Any]:
        """For the offline backend, which runs code written out in the Planner's message."""
        return {"code_blocks": extract_code_blocks(ctx.last_post.message), "files": [], "previous_error": None}
