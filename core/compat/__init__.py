"""Compatibility with TaskWeaver: its config keys (``config_keys``), its import paths
(``import core.compat.taskweaver``) and plugin files run on their own (``autoload``)."""
