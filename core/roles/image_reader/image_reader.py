"""ImageReader: a vision-capable model looks at one image of the chat's folder and answers the
Planner's question about it.

As TaskWeaver's role of that name, the Planner's message names the image (an upload, or a figure
the code saved) and says what it wants to know; the answer goes back to the Planner. The image is
read only through ``core.safe_files`` (no link followed, the open handle checked, at most
``image_reader.max_image_mb``), must be PNG, JPEG, GIF or WEBP by its bytes, and is sent as an
OpenAI-style ``image_url`` content part with a data URL. Its model is ``image_reader.llm_alias``
(a vision model in ``ext_llms.llm_configs``), else the chat's. With no model (offline) it says
what the file's header tells (format, size, pixels) and that a vision model is needed for more.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from core.errors import ConfigError
from core.events import PostEventProxy
from core.llm.content import ChatMessage, image_part
from core.llm.json_stream import FieldEvent
from core.memory import Post
from core.roles.base import FieldRenderer
from core.roles.context import RoundContext
from core.roles.deps import RoleDeps
from core.roles.ext import ExtRole, RoleEntry, role_prompt
from core.roles.image_reader.image_facts import ImageFacts, image_facts
from core.roles.prompts import RolePrompt
from core.roles.protocol import PLANNER, ReplyContract
from core.safe_files import Refusal, UnsafeFile, open_file, relative_name

DEFAULT_MAX_IMAGE_MB = 10.0
MAX_IMAGE_MB_CEILING = 100.0  # model APIs take far less; base64 makes it a third bigger again
PROMPT_KEYS = ("system", "question", "reask")
_EXTENSIONS = r"(?:png|jpe?g|gif|webp)"
# A name in quotes or backticks (it may hold spaces), else a bare word ending in an image extension.
_QUOTED = re.compile(r"[`'\"]([^`'\"\n]{1,255}\." + _EXTENSIONS + r")[`'\"]", re.IGNORECASE)
_BARE = re.compile(r"(?<![\w./-])([\w./-]{1,255}\." + _EXTENSIONS + r")\b", re.IGNORECASE)


class ImageAnswer(BaseModel):
    answer: str = Field(description="your answer about the image")


def named_image(message: str, files: list[str], cwd: Path) -> str | None:
    """The file the message names: a quoted or bare name with an image extension, else a file of
    the folder named in it (its bytes decide whether it is an image). Absolute paths inside the
    folder are made relative; anything else is left for ``open_file`` to refuse."""
    for pattern in (_QUOTED, _BARE):
        match = pattern.search(message)
        if match is not None:
            name = match.group(1).strip()
            try:
                return relative_name(name, cwd)
            except UnsafeFile:
                return name
    for name in sorted(files, key=len, reverse=True):
        if re.search(r"(?<![\w.-])" + re.escape(name) + r"(?![\w-])", message):
            return name
    return None


class ImageReader(ExtRole):
    def __init__(self, deps: RoleDeps, entry: RoleEntry) -> None:
        super().__init__(deps, entry)
        self.prompt = RolePrompt(role_prompt(entry.file, PROMPT_KEYS), ReplyContract(ImageAnswer))
        self.max_image_mb = max_image_mb(self.settings)

    @classmethod
    def check_startup(cls, name: str, settings: dict[str, Any]) -> None:
        max_image_mb(settings)

    def new_renderers(self) -> dict[str, FieldRenderer]:
        """The answer streams into the post's message, so the step fills in as the model writes."""
        return {"answer": _stream_message}

    def reply(self, ctx: RoundContext) -> Post:
        message = ctx.last_post.message
        name = named_image(message, ctx.cwd_files(limit=1000), ctx.cwd)
        if name is None:
            return self._answer(ctx, "No image file was named: send me the name of an image in the working folder.")
        limit = int(self.max_image_mb * 1_000_000)
        try:
            with open_file(ctx.cwd, name, limit) as opened:
                data = opened.read_all()
        except UnsafeFile as exc:
            said = exc.said
            if exc.reason is Refusal.TOO_BIG:
                said = f"is over the {self.max_image_mb:g} MB limit for images (image_reader.max_image_mb)"
            return self._answer(ctx, f"I could not read the image: {exc.name} {said}.")
        except OSError as exc:
            return self._answer(ctx, f"I could not read the image {name}: {exc.strerror or exc}.")
        facts = image_facts(data)
        if facts is None:
            return self._answer(ctx, f"{name} is not a PNG, JPEG, GIF or WEBP image (judged by its contents).")
        if self.llm.configured() is None:  # the offline backend: no model can look at it
            return self._answer(ctx, offline_answer(name, facts))
        templates = self.prompt.templates
        question = templates.render("question", name=name, facts=facts.describe(), message=message)
        messages: list[ChatMessage] = [
            {"role": "system", "content": templates.render("system", reply_format=self.prompt.contract.format())},
            {"role": "user", "content": [{"type": "text", "text": question}, image_part(facts.mime, data)]},
        ]
        hints = {"image": {"name": name, "format": facts.format, "width": facts.width, "height": facts.height}}
        proxy, reply = self.ask_model(ctx, messages, hints)
        if proxy.post.message != reply.answer:  # streamed as it came; the validated answer is the word
            proxy.replace_message(reply.answer)
        proxy.update_send_to(PLANNER)
        return proxy.end()

    def _answer(self, ctx: RoundContext, text: str) -> Post:
        """An answer made without the model (a refusal, or the offline facts), to the Planner."""
        proxy = ctx.emitter.post_proxy(ctx.round.id, Post(send_from=self.alias))
        proxy.update_message(text, is_end=True)
        proxy.update_send_to(PLANNER)
        return proxy.end()


def _stream_message(proxy: PostEventProxy, event: FieldEvent) -> None:
    if event.kind == "chunk":
        proxy.update_message(event.text, is_end=False)
    elif event.kind == "end":
        proxy.update_message("", is_end=True)


def max_image_mb(settings: dict[str, Any]) -> float:
    """``image_reader.max_image_mb``: a number above 0 (10 when unset); else a ``ConfigError``."""
    value = settings.get("max_image_mb", DEFAULT_MAX_IMAGE_MB)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_IMAGE_MB_CEILING:
        raise ConfigError(
            f"image_reader.max_image_mb: expected a number of MB above 0 and at most {MAX_IMAGE_MB_CEILING:g}, "
            f"got {value!r}"
        )
    return float(value)


def offline_answer(name: str, facts: ImageFacts) -> str:
    return (
        f"{name} is {facts.describe()}. No vision model is configured, so I cannot say what it shows: "
        "set image_reader.llm_alias to a vision-capable model of ext_llms.llm_configs (or make llm.* one)."
    )
