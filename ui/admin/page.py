"""The admin and account pages, server-rendered HTML with no script at all.

Every value that came from a user (names, chat titles, step texts, comments) goes through
``esc``; nothing else is ever put in the page. Forms post back to this server with the login's
CSRF token in a hidden field (``ui.admin.access``).
"""

from __future__ import annotations

from html import escape
from typing import Iterable, Sequence

from core.experience import Tip
from ui.admin.access import CSRF_FIELD
from ui.admin.figures import Figure
from ui.admin.sessions import SessionRow
from ui.history.feedback import GivenFeedback
from ui.history.usage import UserUsage
from ui.logins.users import UserInfo

STEP_CHARS = 400  # how much of a step's text the feedback list shows

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem auto;max-width:72rem;padding:0 1rem;color:#222}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}
th,td{border-bottom:1px solid #ddd;padding:.35rem .5rem;text-align:left;vertical-align:top;font-size:.9rem}
th{background:#f4f4f4}form.inline{display:inline}button{margin:0 .15rem;cursor:pointer}
.note{padding:.5rem .75rem;background:#eef6ee;border:1px solid #9c9}.error{background:#fbeeee;border-color:#c99}
.muted{color:#777}pre{white-space:pre-wrap;margin:0;font-size:.85rem;max-height:8rem;overflow:auto}
"""


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def shell(title: str, body: str, note: str = "", error: bool = False) -> str:
    """A whole page around ``body`` (already escaped HTML)."""
    shown = f'<p class="note{" error" if error else ""}" role="status">{esc(note)}</p>' if note else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_STYLE}</style></head>'
        f"<body><h1>{esc(title)}</h1>{shown}{body}</body></html>"
    )


def form(action: str, csrf: str, fields: Iterable[tuple[str, str]], button: str, extra: str = "") -> str:
    """A POST form with hidden ``fields`` and one button; ``extra``: inputs (already escaped HTML)."""
    hidden = "".join(f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">' for k, v in fields)
    return (
        f'<form class="inline" method="post" action="{esc(action)}">'
        f'<input type="hidden" name="{CSRF_FIELD}" value="{esc(csrf)}">{hidden}{extra}'
        f'<button type="submit">{esc(button)}</button></form>'
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def users_section(
    root: str, me: str, csrf: str, users: Sequence[UserInfo], managed: bool, outside: bool = False
) -> str:
    if not managed and outside:
        return _outside_users(root, me, csrf, users)
    if not managed:
        return '<h2>Users</h2><p class="muted">With local login the one user is this machine\'s own.</p>'
    rows = []
    for user in users:
        act = f"{root}/admin/users"
        buttons = [
            form(
                f"{act}/enable" if user.disabled else f"{act}/disable",
                csrf,
                [("name", user.name)],
                "Enable" if user.disabled else "Disable",
            ),
            form(
                f"{act}/role",
                csrf,
                [("name", user.name), ("role", "user" if user.role == "admin" else "admin")],
                "Make user" if user.role == "admin" else "Make admin",
            ),
            form(
                f"{act}/password",
                csrf,
                [("name", user.name)],
                "Reset password",
                '<input type="password" name="password" minlength="8" autocomplete="new-password" '
                f'placeholder="new password" aria-label="new password for {esc(user.name)}">',
            ),
        ]
        if user.name == me:
            buttons = [buttons[2]]  # never disable or demote yourself here (the CLI still can)
        state = '<span class="error">disabled</span>' if user.disabled else "active"
        rows.append(
            f'<tr data-user="{esc(user.name)}"><td>{esc(user.name)}</td><td>{esc(user.role)}</td><td>{state}</td>'
            f"<td>{esc(user.changed)}</td><td>{''.join(buttons)}</td></tr>"
        )
    add = form(
        f"{root}/admin/users/add",
        csrf,
        [],
        "Add user",
        '<input name="name" placeholder="name" aria-label="new user name" required> '
        '<input type="password" name="password" minlength="8" autocomplete="new-password" placeholder="password" '
        'aria-label="new user password" required> <label><input type="checkbox" name="role" value="admin"> admin'
        "</label> ",
    )
    return (
        '<h2>Users</h2><table id="users"><tr><th>name</th><th>role</th><th>state</th><th>password set</th>'
        f"<th></th></tr>{''.join(rows)}</table><p>{add}</p>"
    )


def _outside_users(root: str, me: str, csrf: str, users: Sequence[UserInfo]) -> str:
    """Users of header or OAuth login: added and given passwords by the provider; admins named by
    WEAVER_UI_ADMINS; Weaver can disable them."""
    rows = []
    for user in users:
        action = "enable" if user.disabled else "disable"
        button = (
            ""
            if user.name == me
            else form(f"{root}/admin/users/{action}", csrf, [("name", user.name)], action.capitalize())
        )
        state = '<span class="error">disabled</span>' if user.disabled else "active"
        rows.append(
            f'<tr data-user="{esc(user.name)}"><td>{esc(user.name)}</td><td>{esc(user.role)}</td><td>{state}</td>'
            f"<td>{button}</td></tr>"
        )
    by_name = form(
        f"{root}/admin/users/disable",
        csrf,
        [],
        "Disable",
        '<input name="name" placeholder="user name" aria-label="user to disable" required> ',
    )
    return (
        '<h2>Users</h2><p class="muted">Users come from the login provider (header or OAuth login), which '
        "adds them and keeps their passwords; admins are named in WEAVER_UI_ADMINS. Everyone who has signed in "
        'is listed; a disabled user\'s logins end at once.</p><table id="users"><tr><th>name</th><th>role</th>'
        f"<th>state</th><th></th></tr>{''.join(rows)}</table><p>{by_name}</p>"
    )


def sessions_section(root: str, csrf: str, rows: Sequence[SessionRow]) -> str:
    if not rows:
        return '<h2>Live sessions</h2><p class="muted">No chat holds a Python session on this server now.</p>'
    lines = []
    for row in rows:
        usage = row.usage
        memory = f"{usage.rss_bytes / 2**20:.0f} MiB" if usage else "–"
        cpu = f"{usage.cpu_s:.1f} s ({usage.cpu_share:.0%} of a core)" if usage else "–"
        chat = esc(row.chat_name or row.chat_id or "(not stored)")
        page = "connected" if row.connected else "disconnected"
        stop = form(f"{root}/admin/sessions/stop", csrf, [("session", row.session_id)], "Stop")
        lines.append(
            f'<tr data-session="{esc(row.session_id)}"><td>{esc(row.user)}</td><td>{chat}</td><td>{page}</td>'
            f"<td>{memory}</td><td>{cpu}</td><td>{_duration(row.age_s)}</td><td>{_duration(row.idle_s)}</td>"
            f"<td>{stop}</td></tr>"
        )
    return (
        '<h2>Live sessions</h2><table id="sessions"><tr><th>user</th><th>chat</th><th>page</th>'
        "<th>kernel memory</th><th>kernel CPU</th><th>age</th><th>idle</th><th></th></tr>"
        f"{''.join(lines)}</table>"
    )


def feedback_section(found: Sequence[GivenFeedback] | None) -> str:
    if found is None:
        return '<h2>Feedback</h2><p class="muted">Chat history is not available, so neither is feedback.</p>'
    if not found:
        return '<h2>Feedback</h2><p class="muted">Nobody has given feedback yet.</p>'
    lines = []
    for item in found:
        thumb = "👍" if item.value else "👎"
        label = "thumbs up" if item.value else "thumbs down"
        text = item.step_text[:STEP_CHARS] + ("…" if len(item.step_text) > STEP_CHARS else "")
        lines.append(
            f'<tr><td><span role="img" aria-label="{label}">{thumb}</span></td><td>{esc(item.user)}</td>'
            f"<td>{esc(item.chat_name or item.chat_id)}</td><td><pre>{esc(text)}</pre></td>"
            f"<td>{esc(item.comment)}</td><td>{esc(item.given_on)}</td></tr>"
        )
    return (
        '<h2>Feedback</h2><table id="feedback"><tr><th></th><th>user</th><th>chat</th><th>answer</th>'
        f"<th>comment</th><th>when</th></tr>{''.join(lines)}</table>"
    )


def usage_section(found: Sequence[UserUsage] | None) -> str:
    """Each user's model tokens and cost over every chat (``weaver usage`` prints the same)."""
    if found is None:
        return '<h2>Model usage</h2><p class="muted">Chat history is not available, so neither is usage.</p>'
    if not found:
        return '<h2>Model usage</h2><p class="muted">No model has reported tokens yet.</p>'
    lines = []
    for user in found:
        models = ", ".join(f"{m.model}: {m.prompt_tokens:,} in · {m.completion_tokens:,} out" for m in user.models)
        cost = "" if user.cost is None else f"${user.cost:.4f}"
        lines.append(
            f'<tr data-usage="{esc(user.user)}"><td>{esc(user.user)}</td><td>{user.prompt_tokens:,}</td>'
            f"<td>{user.completion_tokens:,}</td><td>{esc(cost)}</td><td>{user.rounds}</td>"
            f'<td class="muted">{esc(models)}</td></tr>'
        )
    return (
        '<h2>Model usage</h2><table id="usage"><tr><th>user</th><th>tokens in</th><th>tokens out</th><th>cost</th>'
        f"<th>rounds</th><th>per model</th></tr>{''.join(lines)}</table>"
    )


def figures_section(figures: Sequence[Figure]) -> str:
    lines = "".join(
        f'<tr><td title="{esc(f.documentation)}">{esc(f.name)}</td><td>{esc(f.value)}</td>'
        f'<td class="muted">{esc(f.detail)}</td></tr>'
        for f in figures
    )
    return (
        '<h2>Figures</h2><p class="muted">As <code>/metrics</code> reports them now (this server only).</p>'
        f'<table id="figures"><tr><th>series</th><th>value</th><th>by label</th></tr>{lines}</table>'
    )


def experience_section(root: str, csrf: str, tips: Sequence[Tip] | None) -> str:
    """The saved experience tips (core/experience.py), each with Delete."""
    if tips is None:
        return '<h2>Experience</h2><p class="muted">The experience folder could not be read.</p>'
    if not tips:
        return (
            '<h2>Experience</h2><p class="muted">No experience tips yet: a chat\'s owner saves one with '
            "<em>Save as experience</em> under an answer, or <code>weaver experience save CHAT_ID</code>.</p>"
        )
    lines = []
    for tip in tips:
        text = tip.text[:STEP_CHARS] + ("…" if len(tip.text) > STEP_CHARS else "")
        delete = form(f"{root}/admin/experience/delete", csrf, [("tip", tip.exp_id)], "Delete")
        lines.append(
            f'<tr data-tip="{esc(tip.exp_id)}"><td>{esc(tip.exp_id)}</td>'
            f"<td>{'handcrafted' if tip.handcrafted else 'chat'}</td><td><pre>{esc(text)}</pre></td>"
            f"<td>{delete}</td></tr>"
        )
    return (
        '<h2>Experience</h2><p class="muted">Tips learned from saved chats; a role with '
        "<code>use_experience</code> adds those relevant to a request to its prompt.</p>"
        '<table id="experience"><tr><th>id</th><th>from</th><th>tip</th><th></th></tr>'
        f"{''.join(lines)}</table>"
    )


def password_page(root: str, csrf: str, name: str) -> str:
    fields = (
        '<p><label>Current password <input type="password" name="current" autocomplete="current-password" '
        'required></label></p><p><label>New password <input type="password" name="new" minlength="8" '
        'autocomplete="new-password" required></label></p><p><label>New password again <input type="password" '
        'name="again" minlength="8" autocomplete="new-password" required></label></p>'
    )
    return (
        f"<p>Signed in as <strong>{esc(name)}</strong>. Changing your password signs out your other logins "
        "(other browsers and devices) and closes the chats open now (reload them to go on); this browser "
        "stays signed in.</p>"
        f"{form(f'{root}/account/password', csrf, [], 'Change password', fields)}"
        f'<p><a href="{esc(root or "/")}">Back to the chat</a></p>'
    )
