"""What a new chat shows before its first message: the project's datasets and, without a language
model, that Weaver runs offline.

Chainlit hides its welcome screen (the logo and the starters) as soon as a chat holds a message, so
these notes are sent as folded steps, which it does not count as messages: the logo and the
starters stay, and the notes sit under them, open. A dataset gets a starter of its own
("Profile sales_2024"), which offline mode answers too.
"""

from __future__ import annotations

from typing import Sequence

import chainlit as cl

from core.datasets import Dataset
from ui.markdown import code_text

MAX_DATASET_STARTERS = 3
# The chat settings' "Show every step expanded": a preference of the user's, not of one chat.
EXPAND_STEPS_NOTE = "Your preference for all your chats, kept while the server runs."
OFFLINE_TEXT = (
    "No language model is configured, so Weaver answers by itself: it runs the Python you send in a "
    "fenced block (```` ```python ````), profiles the files you drop in, and explains what it can do. "
    'An operator adds a model in the configuration (see "Configuring a model" in the README).'
)


def datasets_markdown(datasets: Sequence[Dataset]) -> str:
    """Each dataset with its file, description and column notes, and how to profile it."""
    lines: list[str] = []
    for dataset in datasets:
        line = f"- **{code_text(dataset.name)}** (`{code_text(dataset.path)}`)"
        if dataset.description:
            line += f": {' '.join(dataset.description.split())}"
        lines.append(line)
        for column, note in dataset.columns.items():
            lines.append(f"  - `{code_text(column)}`" + (f": {' '.join(note.split())}" if note else ""))
    if datasets:
        lines += ["", f"Send `profile {code_text(datasets[0].name)}` to see a dataset's columns and values."]
    return "\n".join(lines)


def dataset_starters(datasets: Sequence[Dataset]) -> list[cl.Starter]:
    """A "Profile <name>" starter for the first few datasets."""
    return [cl.Starter(label=f"Profile {d.name}", message=f"profile {d.name}") for d in datasets[:MAX_DATASET_STARTERS]]


async def _note(name: str, text: str) -> None:
    step = cl.Step(name=name, type="undefined", default_open=True, show_input=False)
    step.output = text
    await step.send()


async def send_welcome(datasets: Sequence[Dataset], offline: bool) -> None:
    """The notes of a new chat (nothing when there is nothing to say)."""
    if offline:
        await _note("Offline mode: no language model", OFFLINE_TEXT)
    if datasets:
        await _note("Project datasets you can use", datasets_markdown(datasets))
