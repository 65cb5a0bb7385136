"""The admin page (``{root}/admin``) and a user's own password page (``{root}/account/password``):
small server-rendered pages behind the same guards, CSP and login as the chat.

``access``: who asks and whether a form is our own; ``page``: the HTML, every user string escaped;
``sessions``: the live sessions and an admin's Stop; ``processes``: a kernel's memory and CPU from
``/proc``; ``figures``: the ``/metrics`` series at a glance; ``routes``: the routes, mounted by
``ui.server`` with ``install``.
"""

from __future__ import annotations

from ui.admin.routes import AdminContext, install

__all__ = ["AdminContext", "install"]
