"""Weaver's user interfaces: the Chainlit web chat (``ui/app.py``) and its launcher (``ui/cli.py``).

Importing this package must stay cheap and must not import Chainlit or the engine: the
``weaver`` console script imports ``ui.cli`` just to parse arguments.
"""
