"""What each role's model reads, rendered from prompt templates (YAML package data) and the registry.

The Planner's prompt names the registry's workers and the ``send_to`` values; its reply format is
derived from the reply model. The same ``ReplyContract`` renders that format and validates the
answers, so the prompt and the check cannot disagree.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from core.memory import AttachmentType, Post, Round
from core.roles.examples import Example
from core.roles.prompts.history import HISTORY_ROUNDS, code_turn, planner_turn, usable_posts
from core.roles.prompts.templates import PromptTemplates, has_builtin, load_templates, section_of
from core.roles.protocol import CODE_INTERPRETER, PLANNER, CodeReply, PlannerReply, ReplyContract, planner_recipients

if TYPE_CHECKING:  # core.config loads the templates of this package to check prompt files
    from core.config import AppConfig

__all__ = ["CodePrompt", "PlannerPrompt", "RolePrompt", "prompt_file_for", "role_templates"]

Message = dict[str, str]
RENDERED_KEPT = 256  # rendered turns kept per role: more than the history window sends


def prompt_file_for(alias: str, config: AppConfig) -> Path | None:
    """The app's own prompt file for a role (``<section>.prompt_file_path``), if it set one."""
    section = getattr(config, section_of(alias), None)
    path = getattr(section, "prompt_file_path", None)
    return Path(path) if path else None


def role_templates(alias: str, config: AppConfig) -> PromptTemplates:
    return load_templates(section_of(alias), prompt_file_for(alias, config))


def _worker_description(alias: str, config: AppConfig) -> str:
    """How the Planner introduces a worker: the ``description`` of its prompt file, if it has one."""
    if not has_builtin(section_of(alias)):
        return ""
    templates = role_templates(alias, config)
    return templates.render("description").strip() if templates.has("description") else ""


def _opened(turns: list[Message], opener: str) -> list[Message]:
    """``turns`` with ``opener`` in front of the first user turn (nothing to add: as they are)."""
    first = next((i for i, m in enumerate(turns) if m["role"] == "user"), None)
    if opener and first is not None:
        turns[first] = {**turns[first], "content": f"{opener}\n{turns[first]['content']}"}
    return turns


def _same(kept: tuple[Any, ...], now: tuple[Any, ...]) -> bool:
    """The same objects, one by one (``is``: a content replaced by an equal one still counts as new)."""
    return len(kept) == len(now) and all(a is b for a, b in zip(kept, now, strict=True))


def _listing(items: Sequence[str] | str) -> str:
    text = items if isinstance(items, str) else ", ".join(items)
    return text or "(none)"


class RolePrompt:
    """A role's templates plus the contract its answers must meet."""

    def __init__(self, templates: PromptTemplates, contract: ReplyContract) -> None:
        self.templates = templates
        self.contract = contract
        # The project's datasets (core/datasets.py), listed within session.max_dataset_prompt_chars;
        # set by the session, the same for every turn.
        self.datasets = ""
        # Every request re-sends the recent turns; each is rendered once (posts do not change
        # once they are in the conversation), so a prompt costs the same at round 50 as at round 2.
        self._rendered: OrderedDict[tuple[str, str], str] = OrderedDict()
        # The same for a whole post's turns (its JSON, a result's template), by post id; an entry
        # is used only for the very post it was made from, unchanged (see ``_post_turns``).
        self._round_turns_kept: OrderedDict[str, tuple[Round, str, tuple[Any, ...], list[Message]]] = OrderedDict()
        self._post_turns_kept: OrderedDict[str, tuple[Post, tuple[Any, ...], list[Message]]] = OrderedDict()
        # The example conversations (core/roles/examples.py) the role chose for this turn; shown
        # after the system prompt as earlier conversations, rendered like the chat's own turns.
        self.examples: Sequence[Example] = ()
        # Prompt compression (core/compression.py), set by the role for this turn: the rounds a
        # running summary stands for are left out, and ``summary`` (its note) opens the chat instead.
        self.summary = ""
        self.summarised: frozenset[str] = frozenset()
        # The experience tips (core/experience.py) the role chose for this turn; after the system prompt.
        self.tips: Sequence[str] = ()

    def _conversations(self, history: list[Round], current: Round) -> list[Message]:
        """Each example's turns, then the chat's; with examples, each conversation opens with
        the ``new_conversation`` line (TaskWeaver's delimiter), so the model tells them apart."""
        kept = [r for r in history if r.id not in self.summarised] if self.summarised else history
        chat = self._chat_turns(kept, current)
        if not self.examples:
            return _opened(chat, self.summary)
        opener = self.templates.render("new_conversation").strip()
        messages: list[Message] = []
        for posts in [[p for r in e.rounds for p in r.post_list] for e in self.examples]:
            messages.extend(_opened(self._turns(posts), opener))
        messages.extend(_opened(chat, "\n".join(t for t in (opener, self.summary) if t)))
        return messages

    def _chat_turns(self, history: list[Round], current: Round) -> list[Message]:
        """``_turns(recent_posts(history, current))``, each earlier round's turns made once: a round
        in the history is over, and every request re-sends the recent ones. Made again if the round
        has other posts, or a post another message, recipient or number of attachments."""
        messages: list[Message] = []
        for rnd in history[-HISTORY_ROUNDS:]:
            posts = rnd.post_list if rnd.state == "finished" else rnd.post_list[:1]
            state = tuple(x for p in posts for x in (p, p.message, p.send_to, len(p.attachment_list)))
            kept = self._round_turns_kept.get(rnd.id)
            if kept is None or kept[0] is not rnd or kept[1] != rnd.state or not _same(kept[2], state):
                turns = self._turns(usable_posts(posts))
                kept = self._round_turns_kept[rnd.id] = (rnd, rnd.state, state, turns)
                self._round_turns_kept.move_to_end(rnd.id)
                if len(self._round_turns_kept) > RENDERED_KEPT:
                    self._round_turns_kept.popitem(last=False)
            messages.extend(dict(m) for m in kept[3])
        messages.extend(self._turns(usable_posts(current.post_list)))
        return messages

    def transcript(self, rounds: list[Round]) -> str:
        """These rounds as this role's turns, as JSON: what the round compressor summarises ("" when
        the role had no turn in them)."""
        posts = [p for r in rounds for p in (r.post_list if r.state == "finished" else r.post_list[:1])]
        turns = self._turns(posts)
        return json.dumps(turns, ensure_ascii=False, indent=1) if turns else ""

    def _turns(self, posts: list[Post]) -> list[Message]:
        """The chat messages of one conversation's posts, as this role sees them."""
        messages: list[Message] = []
        for post in posts:
            messages.extend(self._post_turns(post))
        return messages

    def _post_turns(self, post: Post) -> list[Message]:
        """``_turns_of(post)``, rendered once: a post in the conversation is finished, and every
        request re-sends it. Kept for the same object only, with the very same message, recipient
        and attachment contents (an example's post may share an id with another; a finished post
        is not edited, but if one were, it is rendered again)."""
        state = (post.message, post.send_to, *(a.content for a in post.attachment_list))
        kept = self._post_turns_kept.get(post.id)
        if kept is not None and kept[0] is post and _same(kept[1], state):
            return [dict(m) for m in kept[2]]
        turns = self._turns_of(post)
        self._post_turns_kept[post.id] = (post, state, turns)
        self._post_turns_kept.move_to_end(post.id)
        if len(self._post_turns_kept) > RENDERED_KEPT:
            self._post_turns_kept.popitem(last=False)
        return [dict(m) for m in turns]

    def _turns_of(self, post: Post) -> list[Message]:
        """One post's chat messages, as this role sees them (none: not this role's business)."""
        raise NotImplementedError

    def messages(self, history: list[Round], current: Round, files: list[str], plugins: str) -> list[Message]:
        """The chat the role's model is asked to continue: system prompt, then recent turns."""
        raise NotImplementedError

    def reask(self, problem: str) -> str:
        """The corrective message after an unusable answer."""
        return self.templates.render("reask", problem=problem, reply_format=self.contract.format())

    def _system(self, **values: Any) -> Message:
        key = ("system", repr(sorted(values.items())) + self.datasets)
        content = self._rendered.get(key)
        if content is None:  # the same until the session's files or the plugins change
            content = self._rendered[key] = self.templates.render(
                "system", reply_format=self.contract.format(), datasets=self.datasets, **values
            )
        if self.tips and self.templates.has("experience"):
            content = f"{content}\n\n{self.templates.render('experience', tips=list(self.tips))}"
        return {"role": "system", "content": content}

    def _incoming(self, sender: str, message: str) -> Message:
        key = (sender, message)
        content = self._rendered.get(key)
        if content is None:
            content = self._rendered[key] = self.templates.render("incoming", sender=sender, message=message)
            if len(self._rendered) > RENDERED_KEPT:
                self._rendered.popitem(last=False)
        return {"role": "user", "content": content}


class PlannerPrompt(RolePrompt):
    """The Planner's prompt: workers and allowed recipients come from the role registry."""

    def __init__(self, config: AppConfig, workers: Sequence[str], intros: Mapping[str, str] | None = None) -> None:
        """``intros``: a registered role's own words (its role file's ``intro``) over its prompt's description."""
        self.workers = tuple(workers)
        intros = intros or {}
        self.recipients = planner_recipients(self.workers)
        super().__init__(role_templates(PLANNER, config), ReplyContract(PlannerReply, {"send_to": self.recipients}))
        self._workers = [
            {"name": w, "description": intros.get(w) or _worker_description(w, config)} for w in self.workers
        ]

    def messages(self, history: list[Round], current: Round, files: list[str], plugins: str) -> list[Message]:
        system = self._system(
            workers=self._workers, recipients=list(self.recipients), files=_listing(files), plugins=_listing(plugins)
        )
        return [system, *self._conversations(history, current)]

    def _turns_of(self, post: Post) -> list[Message]:
        if post.send_from == PLANNER:
            return [{"role": "assistant", "content": planner_turn(post)}]
        if post.send_to == PLANNER:
            return [self._incoming(str(post.send_from), post.message)]
        return []


class CodePrompt(RolePrompt):
    """The CodeInterpreter's prompt: instructions from the Planner, its code, and each run's result."""

    def __init__(self, config: AppConfig) -> None:
        super().__init__(role_templates(CODE_INTERPRETER, config), ReplyContract(CodeReply))

    def messages(self, history: list[Round], current: Round, files: list[str], plugins: str) -> list[Message]:
        return [self._system(files=_listing(files), plugins=_listing(plugins)), *self._conversations(history, current)]

    def _turns_of(self, post: Post) -> list[Message]:
        if post.send_from == PLANNER and post.send_to == CODE_INTERPRETER:
            return [self._incoming(PLANNER, post.message)]
        if post.send_from != CODE_INTERPRETER:
            return []
        messages = [{"role": "assistant", "content": code_turn(post)}]
        if post.get_attachment(AttachmentType.execution_status):
            retry = post.send_to == CODE_INTERPRETER
            content = self.templates.render("execution_result", result=post.message, retry=retry)
            messages.append({"role": "user", "content": content})
        return messages
