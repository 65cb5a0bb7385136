"""The ``weaver`` command: ``weaver ui`` serves the web chat, ``weaver chat`` the terminal chat,
``weaver user`` manages password-login users, ``weaver check`` checks the model connection,
``weaver export`` writes a chat of the history as a notebook or Markdown, ``weaver experience``
saves a chat as an experience tip and lists or deletes tips.

``weaver ui`` runs ``python -m ui.chainlit_main run <repo>/ui/app.py --headless`` (Chainlit's own
command line, see ``ui/chainlit_main.py``) with the repo root as
the working directory, because Chainlit finds ``.chainlit/config.toml``, ``chainlit.md`` and
``public/`` relative to it. Only the standard library is imported here, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    from ui.audit import AuditLog
    from ui.logins import UserStore

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_PATH = REPO_ROOT / "ui" / "app.py"


def chainlit_command(host: str, port: int) -> list[str]:
    """The command line that serves the web UI (kept separate so it can be checked)."""
    argv = ["run", str(APP_PATH), "--headless", "--host", host, "--port", str(port)]
    return [sys.executable, "-m", "ui.chainlit_main", *argv]


def _die_with_parent() -> None:
    """In the server's child, before exec: ask Linux for SIGTERM when ``weaver ui`` dies, even by
    SIGKILL, so a killed replica does not leave its server (and so its kernels) running."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def root_warning(env: Mapping[str, str], euid: int | None = None) -> str | None:
    """The warning for a web server that serves several users as root, or None. ``env`` is the
    server's environment (its ``.env`` included), read as the server picks its login mode."""
    from ui.logins import MODES, AuthSetupError, choose_mode

    if (os.geteuid() if euid is None else euid) != 0:
        return None
    try:
        mode = choose_mode(env.get("WEAVER_UI_AUTH"), env.get("WEAVER_UI_USER_HEADER"), loopback=True)
    except AuthSetupError:
        return None  # the server refuses to start and says why
    if not MODES[mode].serves_others:
        return None
    return (
        f"WARNING: the web server runs as root with the {mode} login: a flaw in it would "
        "give its finder the whole machine. Run `weaver ui` as an ordinary user instead (deploy/weaver.service "
        "and deploy/README.md: useradd --system weaver). Kernels then run as that user, still sandboxed; what "
        "needs root is listed in README, 'What needs root'."
    )


def run_ui(host: str, port: int, app_dir: str | None, public_url: str | None = None, workers: int = 1) -> int:
    """Serve the web UI until stopped; returns the server's exit code (0 after a clean drain).

    Chainlit must run in the repo root, so the app folder (plugins, config, workspace) is resolved
    here, against the folder the user started ``weaver ui`` in, and handed over by environment.
    The app's files are read first (``ui/startup.py``): a bad one stops here, in a line, before
    anything listens. ``public_url``: the address others type (``ui/public_url.py``).
    The server runs in a process group of its own, so Ctrl-C reaches it once, through here: SIGINT
    and SIGTERM are forwarded and the server drains (``ui/drain.py``); if this process is killed
    outright the server gets SIGTERM from Linux (``_die_with_parent``) and drains all the same.
    ``workers`` > 1: this process routes to that many servers instead (``ui/workers/``).
    """
    from ui.public_url import WILDCARD_HOSTS, PublicUrlError, public_url_env, wildcard_advice
    from ui.startup import EXIT_REFUSED, StartupRefused, check_before_serving

    env = dict(os.environ)
    env["WEAVER_APP_DIR"] = str(Path(app_dir or env.get("WEAVER_APP_DIR") or ".weaver").resolve())
    try:
        check_before_serving(Path(env["WEAVER_APP_DIR"]), env_file=REPO_ROOT / ".env")  # the server's .env
        if public_url:
            env.update(public_url_env(public_url, host, port))
    except (StartupRefused, PublicUrlError) as exc:
        print(f"Weaver UI: {exc}", file=sys.stderr, flush=True)
        return EXIT_REFUSED
    shown = public_url or f"http://{'127.0.0.1' if host in WILDCARD_HOSTS else host}:{port}"
    print(f"Weaver web UI: open {shown}  (app folder {env['WEAVER_APP_DIR']}; Ctrl-C stops it)", flush=True)
    if host in WILDCARD_HOSTS and not public_url and not env.get("WEAVER_UI_ALLOWED_HOSTS"):
        import socket

        print(wildcard_advice(port, socket.gethostname()), flush=True)
    warning = root_warning(server_environment(env, REPO_ROOT))
    if warning:
        print(warning, file=sys.stderr, flush=True)
    from ui.drain import STOP_GRACE_S, drain_seconds

    if workers > 1:
        from ui.workers.supervisor import supervise

        drain_s = drain_seconds(server_environment(env, REPO_ROOT))
        command = chainlit_command(host, port)
        return supervise(command, env, REPO_ROOT, host, port, workers, drain_s, STOP_GRACE_S, _die_with_parent)
    proc = subprocess.Popen(
        chainlit_command(host, port), cwd=REPO_ROOT, env=env, preexec_fn=_die_with_parent, start_new_session=True
    )
    return _serve_until_stopped(proc, drain_seconds(server_environment(env, REPO_ROOT)), STOP_GRACE_S)


def server_environment(env: dict[str, str], cwd: Path) -> dict[str, str]:
    """``env`` as the server will see it: plus the ``.env`` it reads in ``cwd`` (the environment
    wins), so the wrapper's kill deadline uses the server's own ``WEAVER_UI_DRAIN_S``."""
    from ui.chainlit_env import load_dotenv_first

    seen = dict(env)
    load_dotenv_first(seen, str(cwd))
    return seen


def _serve_until_stopped(proc: subprocess.Popen[bytes], drain_s: float, grace_s: float) -> int:
    """Wait for the server; forward SIGINT and SIGTERM to it, and once asked to stop, give it its
    drain and ``grace_s`` more (its shutdown) before killing it. The server's exit code, or 128 +
    the signal that ended it, as a shell reports it."""
    asked: list[float] = []
    stop_within_s = drain_s + grace_s

    def forward(sig: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
        if not asked:
            asked.append(time.monotonic())
            print(f"Stopping: running rounds may finish first (up to {drain_s:g}s)", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if asked and time.monotonic() - asked[0] > stop_within_s:
                    print("The server did not stop in time: killing it", file=sys.stderr, flush=True)
                    proc.kill()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


WORKERS_ENV = "WEAVER_UI_WORKERS"
DEFAULT_WORKERS = 1  # measured: README, "Several workers on one machine"
MAX_WORKERS = 64


def _worker_count(text: str) -> int:
    """``--workers``: a count from 1 to ``MAX_WORKERS``, or ``auto`` (the cores this process may use)."""
    if text.strip().lower() == "auto":
        return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers (1 to {MAX_WORKERS}, or auto)") from None
    if not 1 <= count <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{count} workers: give 1 to {MAX_WORKERS}, or auto")
    return count


# The login modes are ui.logins.MODES (not imported here: --help stays instant; a test keeps them equal).
UI_EPILOG = """\
login (WEAVER_UI_AUTH):
  local     the default on 127.0.0.1: whoever reaches the page is you (WEAVER_UI_LOCAL_USER)
  password  users you add with `weaver user add NAME` (kept in <app dir>/users.json)
  header    a trusted proxy names the user in WEAVER_UI_USER_HEADER
  oauth     GitHub, Google, Azure AD... through Chainlit's OAUTH_* variables and WEAVER_UI_ALLOWED_USERS

for colleagues (add each one first: weaver user add NAME):
  WEAVER_UI_AUTH=password weaver ui --host 0.0.0.0 --public-url http://$(hostname):8000

Every setting (WEAVER_UI_* for the web server, taskweaver_config.json or WEAVER_* for the model,
kernels and limits) is described in {readme}.
"""


def installed_version() -> str:
    """The installed package's version (``pyproject.toml``), from its metadata."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("weaver-chat")
    except PackageNotFoundError:
        return "(not installed: run `pip install -e .`)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weaver", description="Weaver: chat with a code-first data agent.")
    parser.add_argument("--version", action="version", version=f"weaver {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    ui = sub.add_parser(
        "ui",
        help="serve the web chat (Chainlit)",
        description="Serve the web chat. On 127.0.0.1 you are signed in as the local user without a question.",
        epilog=UI_EPILOG.format(readme=REPO_ROOT / "README.md"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: every one)")
    ui.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    ui.add_argument("--app-dir", help="folder with plugins/, taskweaver_config.json and workspace/ (default ./.weaver)")
    ui.add_argument(
        "--public-url",
        metavar="URL",
        help="the address others type (http://teambox:8000, or the proxy's https://…): its host is answered "
        "and its pages accepted, besides the loopback names",
    )
    ui.add_argument(
        "--workers",
        type=_worker_count,
        default=None,
        metavar="N",
        help="server processes behind one port, each browser kept on its own (default: WEAVER_UI_WORKERS, else "
        f"{DEFAULT_WORKERS}; 'auto': one per core)",
    )
    sub.add_parser("chat", help="chat in this terminal (see: weaver chat --help)", add_help=False)
    check = sub.add_parser("check", help="check the configured model connection and name what to fix")
    check.add_argument("--app-dir", help="the app folder whose taskweaver_config.json to read (default ./.weaver)")
    check.add_argument("--model", help="check this choice of llm.models instead of the default model")
    usage = sub.add_parser("usage", help="list each user's model tokens and cost (from the chat history database)")
    usage.add_argument("--app-dir", help="the app folder whose weaver.db to read (default ./.weaver)")
    user = sub.add_parser("user", help="manage password-login users (WEAVER_UI_AUTH=password)")
    user.add_argument("--app-dir", help="the app folder whose users.json to change (default ./.weaver)")
    actions = user.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add a user, or set a new password (signs out its logins)")
    add.add_argument("name")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.add_argument("--admin", action="store_true", help="make the user an admin (the admin page, /admin)")
    passwd = actions.add_parser("passwd", help="change a user's password and sign out all its logins at once")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    actions.add_parser("remove", help="remove a user and sign out all its logins at once").add_argument("name")
    outside = "a user of header or OAuth login, who has no password here"
    disable = actions.add_parser("disable", help="disable a user: their logins and live chats end at once")
    disable.add_argument("name")
    disable.add_argument("--outside", action="store_true", help=outside)
    enable = actions.add_parser("enable", help="let a disabled user sign in again")
    enable.add_argument("name")
    enable.add_argument("--outside", action="store_true", help=outside)
    role = actions.add_parser("role", help="make a user an admin or an ordinary user")
    role.add_argument("name")
    role.add_argument("role", choices=["admin", "user"])
    actions.add_parser("list", help="list the users with their roles and whether they are disabled")
    export = sub.add_parser("export", help="export a chat of the web UI's history as a notebook or Markdown")
    export.add_argument("chat_id", metavar="CHAT_ID", help="the chat id (the end of its address in the browser)")
    export.add_argument("--format", choices=("ipynb", "md"), default="ipynb", help="default ipynb")
    export.add_argument("-o", "--output", metavar="FILE", help="output file (default: the chat name; - for stdout)")
    export.add_argument("--app-dir", help="the server's app folder (default ./.weaver)")
    experience = sub.add_parser("experience", help="save a chat as an experience tip; list or delete tips")
    tips = experience.add_subparsers(dest="action", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--app-dir", help="the server's app folder (default ./.weaver)")
    save = tips.add_parser("save", parents=[where], help="summarise a chat into a tip (with the experience model)")
    save.add_argument("ident", metavar="CHAT_ID", help="the chat id (the end of its address), or a session id")
    tips.add_parser("list", parents=[where], help="list the tips: id, source, first words")
    delete = tips.add_parser("delete", parents=[where], help="delete a tip and its saved chat")
    delete.add_argument("ident", metavar="ID")
    return parser


def _os_user() -> str:
    """Who ran ``weaver user`` (the audit log's ``by``)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def run_user(
    action: str,
    name: str | None,
    app_dir: str | None,
    password_stdin: bool,
    admin: bool = False,
    role: str | None = None,
    outside: bool = False,
) -> int:
    """``weaver user add|passwd|remove|disable|enable|role|list``: the password store in the app
    folder. A running server re-reads it at its next request, so a removal, a disabling or a new
    password ends the user's logins at once, and a role holds at the admin page's next request."""
    import getpass

    from ui.audit import AuditEvent, AuditLog
    from ui.logins import NoSuchUser, UserStore

    folder = Path(app_dir or os.environ.get("WEAVER_APP_DIR") or ".weaver").resolve()
    store = UserStore(folder)
    audit = AuditLog(folder)  # the server's audit.jsonl: who changed the users, from this machine
    if action == "list":
        for info in store.users():
            print(f"{info.name}\t{info.role}{chr(9) + 'disabled' if info.disabled else ''}")
        return 0
    assert name is not None
    if action in ("disable", "enable", "role"):
        return _change_user(store, audit, action, name, role, outside)
    if action == "remove":
        if not store.remove(name):
            print(f"weaver user: no user {name!r} in {store.path}", file=sys.stderr)
            return 1
        audit.record(AuditEvent.USER_REMOVED, user=name, client="cli", by=_os_user())
        print(f"removed {name}; their logins end at once")
        return 0
    if action == "passwd" and name not in store.names():
        print(f"weaver user: no user {name!r} in {store.path}; add one with `weaver user add {name}`", file=sys.stderr)
        return 1
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            print("weaver user: the two passwords differ; nothing changed", file=sys.stderr)
            return 1
    try:
        new = store.add(name, password, must_exist=action == "passwd", role="admin" if admin else None)
    except NoSuchUser:
        print(f"weaver user: no user {name!r} in {store.path}; nothing changed", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"weaver user: {exc}; nothing changed", file=sys.stderr)
        return 1
    audit.record(AuditEvent.USER_ADDED if new else AuditEvent.PASSWORD_CHANGED, user=name, client="cli", by=_os_user())
    if admin:
        audit.record(AuditEvent.ROLE_CHANGED, user=name, client="cli", by=_os_user(), role="admin")
    if new:
        print(f"added {name}{' (admin)' if admin else ''} in {store.path}")
    else:
        print(f"changed the password of {name} in {store.path}; their earlier logins end at once")
    return 0


def _change_user(
    store: UserStore, audit: AuditLog, action: str, name: str, role: str | None, outside: bool = False
) -> int:
    """``weaver user disable|enable|role`` (``outside``: a header or OAuth user, without a record yet)."""
    from ui.audit import AuditEvent
    from ui.logins import NoSuchUser

    try:
        if action == "role":
            assert role is not None
            changed = store.set_role(name, role)
        elif outside:
            changed = store.set_disabled_outside(name, action == "disable")
        else:
            changed = store.set_disabled(name, action == "disable")
    except NoSuchUser:
        hint = " (a user of header or OAuth login: add --outside)" if action != "role" else ""
        print(f"weaver user: no user {name!r} in {store.path}{hint}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"weaver user: {exc}; nothing changed", file=sys.stderr)
        return 1
    if action == "role":
        if changed:
            audit.record(AuditEvent.ROLE_CHANGED, user=name, client="cli", by=_os_user(), role=role)
        print(f"{name} is {'now' if changed else 'already'} {'an admin' if role == 'admin' else 'a user'}")
        return 0
    event = AuditEvent.USER_DISABLED if action == "disable" else AuditEvent.USER_ENABLED
    if changed:
        audit.record(event, user=name, client="cli", by=_os_user())
    if action == "disable":
        print(f"disabled {name}; their logins and live chats end at once" if changed else f"{name} is already disabled")
    else:
        print(f"enabled {name}; they can sign in again" if changed else f"{name} is not disabled")
    return 0


def run_usage(app_dir: str | None) -> int:
    """``weaver usage``: every user's tokens and cost, per model, from the history database
    (``WEAVER_DATABASE_URL``, else ``<app_dir>/weaver.db``)."""
    import asyncio

    from ui.history import HistoryConfigError, history_settings
    from ui.history.usage import read_usage, usage_table

    folder = Path(app_dir or os.environ.get("WEAVER_APP_DIR") or ".weaver").resolve()
    try:
        users = asyncio.run(read_usage(folder, history_settings().database_url))
    except HistoryConfigError as exc:
        print(f"weaver usage: {exc}", file=sys.stderr)
        return 1
    print(usage_table(users))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "ui":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        try:
            workers = args.workers or _worker_count(os.environ.get(WORKERS_ENV) or str(DEFAULT_WORKERS))
        except argparse.ArgumentTypeError as exc:
            parser.error(f"{WORKERS_ENV}: {exc}")
        return run_ui(args.host, args.port, args.app_dir, args.public_url, workers)
    if args.command == "check":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from ui.check import main as check_main

        return check_main(args.app_dir, args.model)
    if args.command == "usage":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return run_usage(args.app_dir)
    if args.command == "user":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return run_user(
            args.action,
            getattr(args, "name", None),
            args.app_dir,
            getattr(args, "password_stdin", False),
            admin=getattr(args, "admin", False),
            role=getattr(args, "role", None),
            outside=getattr(args, "outside", False),
        )
    if args.command == "export":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from ui.chat_export import run_export

        return run_export(args.chat_id, args.format, args.output, args.app_dir)
    if args.command == "experience":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from ui.experience import run_experience

        return run_experience(args.action, getattr(args, "ident", None), args.app_dir)
    from ui.console import main as chat_main

    return int(chat_main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
