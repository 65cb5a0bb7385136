"""A role asks its model for one JSON answer, streams it into a post, and re-asks once if it is unusable."""

from __future__ import annotations

import abc
from typing import Any, Callable, Sequence

from opentelemetry.trace import Span

from core import metrics
from core.cancel import RoundCancelled
from core.compression import RoundCompressor
from core.config import AppConfig
from core.errors import ConfigError
from core.events import PostEventProxy
from core.experience import ExperienceShelf
from core.experience import log as experience_log
from core.experience import named_sub_path as experience_sub_path
from core.ids import create_id
from core.llm.base import ChatMessage, ChatRequest, LLMBackend, LLMCallRecord
from core.llm.json_stream import FieldEvent, JsonProtocolError, JsonStreamParser
from core.memory import AttachmentType, Post, PostStatus
from core.roles.context import RoundContext, RoundFailed
from core.roles.examples import ExampleShelf, named_sub_path
from core.roles.examples import log as examples_log
from core.roles.prompts import RolePrompt
from core.roles.prompts.templates import section_of
from core.roles.protocol import PLANNER
from core.usage import cost_of

# Turns one streamed JSON field of the model's answer into updates of the post.
FieldRenderer = Callable[[PostEventProxy, FieldEvent], None]


class StreamedField:
    """Maps a streamed top-level string field onto one attachment of the post."""

    def __init__(self, type: AttachmentType) -> None:
        self.type = type
        self.attachment_id = ""

    def __call__(self, proxy: PostEventProxy, event: FieldEvent) -> None:
        if event.kind == "start":
            self.attachment_id = create_id("atta")
            proxy.update_attachment("", self.type, self.attachment_id, is_end=False)
        elif event.kind == "chunk":
            proxy.update_attachment(event.text, self.type, self.attachment_id, is_end=False)
        elif event.kind == "end":
            proxy.update_attachment("", self.type, self.attachment_id, is_end=True)


class Role(abc.ABC):
    """A participant of the round; ``prompt`` (set by each role) holds its templates and reply contract."""

    alias: str = ""
    prompt: RolePrompt
    # Set by the session when the role's <section>.prompt_compression is on (core/compression.py).
    compressor: RoundCompressor | None = None

    def __init__(self, llm: LLMBackend, config: AppConfig) -> None:
        self.llm = llm
        self.config = config
        self._examples: ExampleShelf | None = None
        self._examples_used: tuple[str, ...] = ()
        self._experience: ExperienceShelf | None = None
        self._tips_used: tuple[str, ...] = ()

    def example_roles(self) -> set[str]:
        """The roles an example may name to be shown to this role (TaskWeaver's filter): by default
        this role and the Planner, as TaskWeaver's code generator has it."""
        return {self.alias, PLANNER}

    @property
    def examples(self) -> ExampleShelf | None:
        """This role's example conversations, from its config section's ``use_example``,
        ``example_base_path`` and ``dynamic_example_sub_path`` (none for a role without them)."""
        if self._examples is None:
            settings = getattr(self.config, section_of(self.alias), None)
            if settings is None or not hasattr(settings, "use_example"):
                return None
            self._examples = ExampleShelf(
                self.alias,
                settings.use_example,
                settings.example_base_path,
                settings.dynamic_example_sub_path,
                self.example_roles(),
            )
        return self._examples

    def use_examples(self, ctx: RoundContext) -> list[str]:
        """Choose this turn's example conversations and hand them to the prompt; their names go
        into the call's record (``Round.llm_calls``) and the offline backend's hints."""
        if self.examples is None:
            return []
        sub_path = ""
        if self.examples.dynamic:  # the whole chat's posts: only built when a sub-path may be named
            sub_path = named_sub_path([p for r in (*ctx.history, ctx.round) for p in r.post_list], ctx.session_vars)
        try:
            chosen = self.examples.select(sub_path)
        except ConfigError as exc:  # a file changed into a broken one after the start-up check
            raise RoundFailed(f"The {self.alias}'s example conversations could not be read: {exc}") from None
        except OSError as exc:  # the folder changed while it was read: this turn goes without examples
            examples_log.warning("%s: example folder not readable now (%s); no examples this turn", self.alias, exc)
            chosen = []
        self.prompt.examples = chosen
        names = tuple(e.name for e in chosen)
        if names and names != self._examples_used:  # once per change, not at every turn
            examples_log.info("%s's prompt holds %d example(s): %s", self.alias, len(names), ", ".join(names))
        self._examples_used = names
        return list(names)

    def compress_history(self, ctx: RoundContext) -> None:
        """With prompt compression on: the chat's older rounds, summarised (the summary model is
        asked when enough rounds are pending), go into this turn's prompt as that summary."""
        if self.compressor is None:
            return
        rounds = [*ctx.history, ctx.round]
        state = self.compressor.compress(rounds, self.prompt.transcript, ctx.cancel, ctx.round.llm_calls)
        self.prompt.summary = self.compressor.note(state)
        self.prompt.summarised = frozenset(state.rounds)

    def use_experience(self, ctx: RoundContext, query: str) -> list[str]:
        """Choose the experience tips for ``query`` (``<role>.use_experience``) and hand them to the
        prompt; their ids go into the call's record and the offline backend's hints."""
        settings = getattr(self.config, section_of(self.alias), None)
        if settings is None or not getattr(settings, "use_experience", False):
            return []
        if self._experience is None:
            self._experience = ExperienceShelf(
                self.alias, self.config, True, settings.experience_dir, settings.dynamic_experience_sub_path
            )
        sub_path = ""
        if self._experience.dynamic:
            posts = [p for r in (*ctx.history, ctx.round) for p in r.post_list]
            sub_path = experience_sub_path(posts, ctx.session_vars)
        try:
            tips = self._experience.select(query, sub_path)
        except OSError as exc:  # the folder changed while it was read: this turn goes without tips
            experience_log.warning("%s: experience folder not readable now (%s); no tips this turn", self.alias, exc)
            tips = []
        self.prompt.tips = [t.text for t in tips]
        ids = tuple(t.exp_id for t in tips)
        if ids and ids != self._tips_used:
            experience_log.info("%s's prompt holds %d tip(s): %s", self.alias, len(ids), ", ".join(ids))
        self._tips_used = ids
        return list(ids)

    @abc.abstractmethod
    def reply(self, ctx: RoundContext) -> Post:
        """Take the round's last post (addressed to this role) and answer it with new posts."""

    def new_renderers(self) -> dict[str, FieldRenderer]:
        """Per-field handlers for streamed answers; fields without one are used only when complete."""
        return {}

    def ask_model(
        self,
        ctx: RoundContext,
        messages: Sequence[ChatMessage],
        hints: dict[str, Any],
    ) -> tuple[PostEventProxy, Any]:
        """Stream one answer into a new post; an unusable answer gets one corrective re-ask."""
        if self._examples_used:  # the names, for the offline backend (it does not read prose)
            hints = {**hints, "examples": list(self._examples_used)}
        if self._tips_used:
            hints = {**hints, "experience": list(self._tips_used)}
        for attempt in (1, 2):
            proxy = ctx.emitter.post_proxy(ctx.round.id, Post(send_from=self.alias))
            proxy.update_status(PostStatus.calling_model)
            text = self._stream_into(ctx, proxy, messages, hints)
            try:
                return proxy, self.prompt.contract.validate(text)
            except JsonProtocolError as exc:
                proxy.update_attachment(text, AttachmentType.invalid_response)
                proxy.error(f"The model's answer could not be used: {exc}")
                proxy.update_send_to(self.alias)
                ctx.round.add_post(proxy.end())
                if attempt == 2:
                    raise RoundFailed(
                        f"The {self.alias}'s model answered twice with something that is not the expected "
                        f"JSON, so this round stopped. Last problem: {exc}"
                    ) from None
                messages = [
                    *messages,
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": self.prompt.reask(str(exc))},
                ]
                hints = {**hints, "reask": True}
        raise AssertionError("unreachable")

    def _stream_into(
        self, ctx: RoundContext, proxy: PostEventProxy, messages: Sequence[ChatMessage], hints: dict[str, Any]
    ) -> str:
        request = ChatRequest(role=self.alias, messages=messages, hints=hints)
        assert request.record is not None
        request.record.examples = list(self._examples_used)
        request.record.experience = list(self._tips_used)
        renderers = self.new_renderers()
        parser = JsonStreamParser()
        parts: list[str] = []
        backend = getattr(self.llm, "name", "") or type(self.llm).__name__
        failed = False
        with ctx.tracing.span("weaver.llm", {"gen_ai.system": backend}) as span:
            try:
                for chunk in self.llm.stream_chat(request, ctx.cancel):
                    ctx.cancel.raise_if_cancelled()
                    parts.append(chunk)
                    for event in parser.feed(chunk):
                        render = renderers.get(event.key)
                        if render is not None:
                            render(proxy, event)
            except BaseException as exc:
                if not isinstance(exc, RoundCancelled):  # a cancel is the user's choice, not an error
                    failed = True
                    proxy.error(str(exc) or type(exc).__name__)
                ctx.round.add_post(proxy.end())
                raise
            finally:
                record = request.record
                assert record is not None
                settings = self.llm.configured()
                record.provider = backend
                record.model = record.model or (settings.model if settings is not None else backend)
                record.cost = cost_of(settings, record.prompt_tokens, record.completion_tokens)
                ctx.round.llm_calls.append(record.to_dict())
                _observe_call(span, backend, settings.model if settings is not None else backend, record, failed)
        return "".join(parts)


def _observe_call(span: Span, backend: str, model: str, record: LLMCallRecord, failed: bool) -> None:
    """The call's model, tokens and timing on its span and in the metrics (never its text);
    ``model`` is the configured one (a bounded label), not the name the server answered with."""
    metrics.llm_call(
        backend, failed, record.attempts, record.prompt_tokens, record.completion_tokens, record.first_token_s, model
    )
    if span.is_recording():
        found = {
            "gen_ai.response.model": record.model,
            "gen_ai.usage.input_tokens": record.prompt_tokens,
            "gen_ai.usage.output_tokens": record.completion_tokens,
            "weaver.llm.attempts": record.attempts,
            "weaver.llm.first_token_s": record.first_token_s,
        }
        span.set_attributes({key: value for key, value in found.items() if value is not None and value != ""})
