"""CodeInterpreterCLIOnly: the model answers with one shell command line, run in the session's
sandboxed kernel (a subprocess of the kernel, so inside its sandbox and limits; never the host's shell).

As TaskWeaver's role of that name: the command's output (its error output when there is any)
goes back to the Planner; an empty command returns the model's thought instead.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from core.memory import AttachmentType, Post
from core.roles.base import FieldRenderer, StreamedField
from core.roles.context import RoundContext
from core.roles.deps import RoleDeps
from core.roles.ext import RoleEntry
from core.roles.protocol import ReplyContract
from core.roles.worker import KernelWorker, WorkerPrompt, folder_templates


class CommandReply(BaseModel):
    thought: str = Field("", description="your reasoning")
    command: str = Field(description="one shell command line")


def _turn(post: Post) -> str:
    return json.dumps(
        {"thought": post.first(AttachmentType.thought, ""), "command": post.first(AttachmentType.reply_content, "")},
        ensure_ascii=False,
    )


def command_code(command: str, timeout: float) -> str:
    """Python for the kernel that runs ``command`` with /bin/sh and prints what it printed; a
    non-zero exit fails the run. Names stay local, so the user's variables are untouched."""
    return (
        "def _weaver_cli(command, timeout):\n"
        "    import subprocess, sys\n"
        "    done = subprocess.run(['/bin/sh', '-c', command], capture_output=True, text=True, timeout=timeout)\n"
        "    print(done.stdout, end='')\n"
        "    print(done.stderr, end='', file=sys.stderr)\n"
        "    if done.returncode:\n"
        "        raise RuntimeError(f'the command exited with status {done.returncode}')\n"
        "try:\n"
        f"    _weaver_cli({command!r}, {timeout!r})\n"
        "finally:\n"
        "    del _weaver_cli\n"
    )


class CodeInterpreterCLIOnly(KernelWorker):
    def __init__(self, deps: RoleDeps, entry: RoleEntry) -> None:
        super().__init__(deps, entry)
        self.prompt = WorkerPrompt(self.alias, folder_templates(entry.file), ReplyContract(CommandReply), _turn)

    def new_renderers(self) -> dict[str, FieldRenderer]:
        return {
            "thought": StreamedField(AttachmentType.thought),
            "command": StreamedField(AttachmentType.reply_content),
        }

    def reply(self, ctx: RoundContext) -> Post:
        proxy, reply = self.ask(ctx, self._hints(ctx))
        command = reply.command.strip()
        if not command:
            return self.refuse(proxy, reply.thought or "No command was given.")
        if not proxy.post.get_attachment(AttachmentType.reply_content):
            proxy.update_attachment(command, AttachmentType.reply_content)
        return self.run(ctx, proxy, command_code(command, self.config.execution.timeout))

    def _hints(self, ctx: RoundContext) -> dict[str, Any]:
        """For the offline backend: the Planner's message (a command in a fence, or the text)."""
        return {"command": ctx.last_post.message}
