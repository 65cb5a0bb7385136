"""The routes of the admin page (``{root}/admin``) and of a user's own password
(``{root}/account/password``), on Chainlit's app ahead of its catch-all page route.

They sit behind the same guards as every route (Host and Origin, the security headers and the
page CSP), read the caller from Chainlit's login (``ui.admin.access``) and decide on the server:

* nobody signed in: a page is redirected to the login form, a form post gets 401;
* signed in but not an admin: 403 on every admin route, GET or POST (and an audit line);
* every form post must come from our own origin with this login's CSRF token (403 otherwise);
* every admin action is written to the audit log with ``by`` naming the admin.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from core.experience import ExperienceError, ExperienceStore, Tip
from ui import audit
from ui.admin import page
from ui.admin.access import CSRF_FIELD, Caller, caller, form_allowed
from ui.admin.figures import glance
from ui.admin.sessions import find_chat, session_rows, stop_chat
from ui.audit import AuditEvent
from ui.bridge import run_in_thread
from ui.history.usage import UserUsage, usage_by_user
from ui.lifecycle import SessionOwner
from ui.logins import LoginMode, NoSuchUser, UserStore
from ui.logins.modes import OutsideUsers
from ui.logins.users import UserInfo

logger = logging.getLogger("weaver.ui.admin")

NO_STORE = {"Cache-Control": "no-store"}
FEEDBACK_ROWS = 200
# What a finished action says on the page, by the code in its redirect (never text from the request).
NOTES = {
    "added": "User {name} added.",
    "disabled": "User {name} disabled: their logins and live chats have ended.",
    "enabled": "User {name} enabled: they can sign in again.",
    "role": "User {name} is now {role}.",
    "password": "Password of {name} reset: their earlier logins have ended.",
    "stopped": "The session of {name} was stopped; its kernel is gone.",
    "gone": "That session had already ended.",
    "unchanged": "Nothing to change for {name}.",
    "tip-deleted": "Experience tip {name} deleted.",
    "tip-gone": "There is no experience tip {name}.",
    "nouser": "There is no user {name}.",
    "self": "You cannot disable yourself or take your own admin role here.",
    "invalid": "Not done: {why}.",
    "own-password": "Your password was changed; your other logins have ended.",
    "own-wrong": "The current password is wrong; nothing changed.",
    "own-differ": "The two new passwords differ; nothing changed.",
}
ERRORS = {"nouser", "self", "invalid", "own-wrong", "own-differ", "tip-gone"}


@dataclass
class AdminContext:
    """What the routes need of the server: the login mode, the chats' owner, the history."""

    mode: LoginMode
    owner: SessionOwner[Any]
    history: Callable[[], Any]  # the WeaverDataLayer once open, else None
    root: str = ""
    experience: Callable[[], ExperienceStore] | None = None  # the saved experience tips

    @property
    def store(self) -> UserStore | None:
        """The password store, when users and passwords are Weaver's own (password login)."""
        users = getattr(self.mode, "users", None)
        return users if self.mode.manages_users and isinstance(users, UserStore) else None

    @property
    def outside(self) -> UserStore | None:
        """Where users who come from a proxy or an OAuth provider are disabled (header, oauth login)."""
        users = getattr(self.mode, "users", None)
        return users if isinstance(self.mode, OutsideUsers) and isinstance(users, UserStore) else None


async def _usage(history: Any) -> list[UserUsage] | None:
    """Every user's model usage, or None when the history cannot say (the page still shows)."""
    try:
        return await usage_by_user(history)
    except Exception:
        logger.exception("reading the model usage failed")
        return None


def _refused(status: int, text: str) -> Response:
    return HTMLResponse(page.shell("Not allowed", f"<p>{page.esc(text)}</p>"), status_code=status, headers=NO_STORE)


# Signs the notes this process's own actions send back (``_back``), so a link someone crafted
# (``/admin?done=invalid&why=...``) cannot put words of theirs on an admin's page.
_NOTE_KEY = secrets.token_bytes(32)
_NOTE_FIELDS = ("done", "name", "role", "why")


def _note_signature(values: dict[str, str]) -> str:
    text = "\n".join(f"{k}={values.get(k, '')}" for k in _NOTE_FIELDS)
    return hmac.new(_NOTE_KEY, text.encode(), hashlib.sha256).hexdigest()


def _note(request: Request) -> tuple[str, bool]:
    values = {k: request.query_params.get(k, "") for k in _NOTE_FIELDS}
    template = NOTES.get(values["done"])
    if template is None or not hmac.compare_digest(request.query_params.get("sig", ""), _note_signature(values)):
        return "", False
    return template.format(**{k: values[k] for k in ("name", "role", "why")}), values["done"] in ERRORS


def _back(ctx: AdminContext, path: str, code: str, **values: str) -> Response:
    query = {"done": code, **values}
    query["sig"] = _note_signature(query)
    return RedirectResponse(f"{ctx.root}{path}?{urlencode(query)}", status_code=303)


Handler = Callable[[Request, Caller, dict[str, str]], Awaitable[Response]]


class AdminRoutes:
    def __init__(self, ctx: AdminContext) -> None:
        self.ctx = ctx
        self.actions: dict[str, Handler] = {
            "users/add": self.add_user,
            "users/disable": self.disable,
            "users/enable": self.enable,
            "users/role": self.set_role,
            "users/password": self.reset_password,
            "sessions/stop": self.stop_session,
            "experience/delete": self.delete_tip,
        }

    # ----- who may ----------------------------------------------------------------------------

    async def _admin(self, request: Request) -> Caller | Response:
        who = await caller(request, self.ctx.mode)
        if who is None:
            if request.method == "GET":
                return RedirectResponse(f"{self.ctx.root}/login", status_code=303)
            return _refused(401, "Sign in first.")
        if not who.admin:
            audit.record(AuditEvent.ADMIN_REFUSED, user=who.name, path=request.url.path, reason="not_admin")
            return _refused(403, "This page is for administrators.")
        return who

    async def _form(self, request: Request, who: Caller) -> dict[str, str] | Response:
        data = await request.form()
        fields = {k: v for k, v in data.items() if isinstance(v, str)}
        if not form_allowed(request, who, fields.get(CSRF_FIELD, "")):
            audit.record(AuditEvent.ADMIN_REFUSED, user=who.name, path=request.url.path, reason="csrf")
            return _refused(403, "This form did not come from this server's own page; reload the page and try again.")
        return fields

    # ----- the page ---------------------------------------------------------------------------

    async def show(self, request: Request) -> Response:
        who = await self._admin(request)
        if isinstance(who, Response):
            return who
        if request.method == "POST":
            return _refused(405, "The admin page is read with GET; its forms post to its actions.")
        ctx = self.ctx
        store = ctx.store
        history = ctx.history()
        users = await self._users_listed(history)
        feedback, names, usage = None, {}, None
        if history is not None:
            try:
                feedback = await history.recent_feedback(FEEDBACK_ROWS)
            except Exception:
                logger.exception("reading the feedback failed")
            usage = await _usage(history)
            names = await self._chat_names(history)
        note, error = _note(request)
        body = (
            f"<p>Signed in as <strong>{page.esc(who.name)}</strong> (admin). "
            f'<a href="{page.esc(ctx.root or "/")}">Back to the chat</a>'
            + (f' · <a href="{page.esc(ctx.root)}/account/password">Change your password</a>' if store else "")
            + "</p>"
            + page.users_section(ctx.root, who.name, who.csrf, users, store is not None, ctx.outside is not None)
            + page.sessions_section(ctx.root, who.csrf, session_rows(ctx.owner, names))
            + page.usage_section(usage)
            + page.feedback_section(feedback)
            + page.experience_section(ctx.root, who.csrf, await self._tips())
            + page.figures_section(glance())
        )
        return HTMLResponse(page.shell("Weaver admin", body, note, error), headers=NO_STORE)

    async def _tips(self) -> list[Tip] | None:
        """The saved experience tips (None when this server has no experience folder)."""
        found = self.ctx.experience
        if found is None:
            return None
        try:
            return await run_in_thread(lambda: found().tips(), name="weaver-admin-tips")
        except Exception:
            logger.exception("reading the experience tips failed")
            return None

    async def _users_listed(self, history: Any) -> list[UserInfo]:
        """Password login: the store's users. Header or OAuth login: everyone who has signed in (the
        history's users) and everyone disabled, with the role ``WEAVER_UI_ADMINS`` gives them."""
        ctx = self.ctx
        if ctx.store is not None:
            return await run_in_thread(ctx.store.users, name="weaver-admin-users")
        if ctx.outside is None:
            return []
        kept = {user.name: user for user in await run_in_thread(ctx.outside.users, name="weaver-admin-users")}
        names = set(kept)
        if history is not None:
            try:
                names.update(await history.known_identifiers())
            except Exception:
                logger.exception("reading the users of the history failed")
        return [
            UserInfo(
                name,
                "admin" if ctx.mode.is_admin(name) else "user",
                kept[name].disabled if name in kept else False,
                kept[name].changed if name in kept else "",
            )
            for name in sorted(names)
        ]

    async def _chat_names(self, history: Any) -> dict[str, str]:
        """The titles of the chats live here, from the history (best effort: a title is a nicety)."""
        from chainlit.session import WebsocketSession

        ids = []
        for chat in self.ctx.owner.live_chats():
            thread_id = getattr(WebsocketSession.get_by_id(chat.key), "thread_id", None)
            if thread_id:
                ids.append(str(thread_id))
        try:
            return dict(await history.thread_names(ids))
        except Exception:
            logger.exception("reading the titles of live chats failed")
            return {}

    # ----- the actions ------------------------------------------------------------------------

    async def act(self, request: Request) -> Response:
        who = await self._admin(request)
        if isinstance(who, Response):
            return who
        handler = self.actions.get(f"{request.path_params['section']}/{request.path_params['action']}")
        if handler is None:
            return _refused(404, "No such admin action.")
        if request.method != "POST":
            return _refused(405, "Admin actions are forms: they are posted from the admin page.")
        fields = await self._form(request, who)
        if isinstance(fields, Response):
            return fields
        return await handler(request, who, fields)

    def _users(self) -> UserStore | Response:
        store = self.ctx.store
        if store is None:
            return _refused(409, "Users are managed by the login provider here (password login only).")
        return store

    async def add_user(self, request: Request, who: Caller, fields: dict[str, str]) -> Response:
        store = self._users()
        if isinstance(store, Response):
            return store
        name, role = fields.get("name", "").strip(), "admin" if fields.get("role") == "admin" else "user"
        if name in store.names():
            return _back(self.ctx, "/admin", "invalid", why=f"a user {name} exists already")
        try:
            await run_in_thread(
                lambda: store.add(name, fields.get("password", ""), role="admin" if role == "admin" else "user"),
                name="weaver-admin-add",
            )
        except ValueError as exc:
            return _back(self.ctx, "/admin", "invalid", why=str(exc))
        audit.record(AuditEvent.USER_ADDED, user=name, by=who.name, role=role)
        return _back(self.ctx, "/admin", "added", name=name)

    async def _set_disabled(self, who: Caller, fields: dict[str, str], disabled: bool) -> Response:
        name = fields.get("name", "").strip()
        if disabled and name == who.name:
            return _back(self.ctx, "/admin", "self")
        outside = self.ctx.outside
        try:
            if outside is not None:
                changed = outside.set_disabled_outside(name, disabled)
            else:
                store = self._users()
                if isinstance(store, Response):
                    return store
                changed = store.set_disabled(name, disabled)
        except NoSuchUser:
            return _back(self.ctx, "/admin", "nouser", name=name)
        except ValueError as exc:
            return _back(self.ctx, "/admin", "invalid", why=str(exc))
        if not changed:
            return _back(self.ctx, "/admin", "unchanged", name=name)
        audit.record(AuditEvent.USER_DISABLED if disabled else AuditEvent.USER_ENABLED, user=name, by=who.name)
        return _back(self.ctx, "/admin", "disabled" if disabled else "enabled", name=name)

    async def disable(self, request: Request, who: Caller, fields: dict[str, str]) -> Response:
        return await self._set_disabled(who, fields, True)

    async def enable(self, request: Request, who: Caller, fields: dict[str, str]) -> Response:
        return await self._set_disabled(who, fields, False)

    async def set_role(self, request: Request, who: Caller, fields: dict[str, str]) -> Response:
        store = self._users()
        if isinstance(store, Response):
            return store
        name, role = fields.get("name", ""), fields.get("role", "")
        if name == who.name and role != "admin":
            return _back(self.ctx, "/admin", "self")
        try:
            changed = store.set_role(name, role)
        except NoSuchUser:
            return _back(self.ctx, "/admin", "nouser", name=name)
        except ValueError as exc:
            return _back(self.ctx, "/admin", "invalid", why=str(exc))
        if not changed:
            return _back(self.ctx, "/admin", "unchanged", name=name)
        audit.record(AuditEvent.ROLE_CHANGED, user=name, by=who.name, role=role)
        return _back(self.ctx, "/admin", "role", name=name, role=role)

    async def reset_password(self, request: Request, who: Caller, fields: dict[str, str]) -> Response:
        store = self._users()
        if isinstance(store, Response):
            return store
        name = fields.get("name", "")
        try:
            await run_in_thread(
                lambda: store.add(name, fields.get("password", ""), must_exist=True), name="weaver-admin-password"
            )
        except NoSuchUser:
            return _back(self.ctx, "/admin", "nouser", name=name)
        except ValueError as exc:
            return _back(self.ctx, "/admin", "invalid", why=str(exc))
        audit.record(AuditEvent.PASSWORD_CHANGED, user=name, by=who.name)
        return _back(self.ctx, "/admin", "password", name=name)

    async def stop_session(self, request: Request, who: Caller, fields: dict[str, str]) -> Response:
        chat = find_chat(self.ctx.owner, fields.get("session", ""))
        if chat is None:
            return _back(self.ctx, "/admin", "gone")
        await stop_chat(self.ctx.owner, chat)
        audit.record(AuditEvent.SESSION_STOPPED, user=chat.user_name, by=who.name, session=str(chat.session.session_id))
        return _back(self.ctx, "/admin", "stopped", name=chat.user_name)

    async def delete_tip(self, request: Request, who: Caller, fields: dict[str, str]) -> Response:
        found = self.ctx.experience
        if found is None:
            return _refused(409, "This server keeps no experience tips.")
        tip = fields.get("tip", "")
        try:
            removed = await run_in_thread(lambda: found().delete(tip), name="weaver-admin-tip")
        except ExperienceError as exc:
            return _back(self.ctx, "/admin", "invalid", why=str(exc))
        if not removed:
            return _back(self.ctx, "/admin", "tip-gone", name=tip)
        audit.record(AuditEvent.EXPERIENCE_DELETED, user=who.name, by=who.name, tip=tip)
        return _back(self.ctx, "/admin", "tip-deleted", name=tip)


class AccountRoutes:
    """A signed-in user's own password (password login only)."""

    def __init__(self, ctx: AdminContext) -> None:
        self.ctx = ctx

    async def _who(self, request: Request) -> Caller | Response:
        who = await caller(request, self.ctx.mode)
        if who is None:
            if request.method == "GET":
                return RedirectResponse(f"{self.ctx.root}/login", status_code=303)
            return _refused(401, "Sign in first.")
        if self.ctx.store is None:
            return _refused(404, "Passwords are kept by your login provider, not by Weaver.")
        return who

    async def show(self, request: Request) -> Response:
        who = await self._who(request)
        if isinstance(who, Response):
            return who
        note, error = _note(request)
        body = page.password_page(self.ctx.root, who.csrf, who.name)
        return HTMLResponse(page.shell("Change your password", body, note, error), headers=NO_STORE)

    async def change(self, request: Request) -> Response:
        who = await self._who(request)
        if isinstance(who, Response):
            return who
        store = self.ctx.store
        assert store is not None
        data = await request.form()
        fields = {k: v for k, v in data.items() if isinstance(v, str)}
        if not form_allowed(request, who, fields.get(CSRF_FIELD, "")):
            return _refused(403, "This form did not come from this server's own page; reload the page and try again.")
        new = fields.get("new", "")
        if new != fields.get("again", ""):
            return _back(self.ctx, "/account/password", "own-differ")
        if not await run_in_thread(store.verify, who.name, fields.get("current", ""), name="weaver-own-password"):
            audit.record(AuditEvent.LOGIN_FAILED, user=who.name, mode="password", reason="own_password_change")
            return _back(self.ctx, "/account/password", "own-wrong")
        try:
            await run_in_thread(lambda: store.add(who.name, new, must_exist=True), name="weaver-own-password")
        except (ValueError, NoSuchUser) as exc:
            return _back(self.ctx, "/account/password", "invalid", why=str(exc))
        audit.record(AuditEvent.PASSWORD_CHANGED, user=who.name, by=who.name)
        response = _back(self.ctx, "/account/password", "own-password")
        _sign_in_again(request, response, who.name, store)
        return response


def _sign_in_again(request: Request, response: Response, name: str, store: UserStore) -> None:
    """This browser keeps a login under the new password (a new token, as a password login makes);
    every other login of the user ended with the old epoch."""
    import chainlit as cl
    import chainlit.server as chainlit_server
    from chainlit.auth.cookie import set_auth_cookie

    epoch = store.epoch_of(name)
    token = chainlit_server.create_jwt(
        cl.User(identifier=name, metadata={"provider": "password", "login_epoch": epoch or ""})
    )
    set_auth_cookie(request, response, token)


def install(app: Any, ctx: AdminContext) -> list[Route]:
    """Serve the admin and account routes on Chainlit's FastAPI ``app``, ahead of its catch-all."""
    admin, account = AdminRoutes(ctx), AccountRoutes(ctx)
    root = ctx.root
    routes = [
        # Every method reaches the handlers, so that a refusal (401, 403) comes before any 405.
        Route(f"{root}/admin", admin.show, methods=["GET", "HEAD", "POST"], name="weaver_admin"),
        Route(f"{root}/admin/{{section}}/{{action}}", admin.act, methods=["GET", "POST"], name="weaver_admin_action"),
        Route(f"{root}/account/password", account.show, methods=["GET", "HEAD"], name="weaver_account"),
        Route(f"{root}/account/password", account.change, methods=["POST"], name="weaver_account_change"),
    ]
    for route in reversed(routes):
        app.router.routes.insert(0, route)
    return routes
