"""Runs INSIDE a session's kernel: the user's variables saved to the session folder, and loaded back.

Unpickling runs code, so a snapshot is only ever read here, by the kernel of the chat that wrote
it, in that chat's sandbox; the server sends these calls (``core.snapshot``) and reads only the
JSON they answer. The file is a magic line, a JSON header line (the round it was taken after, the
names it holds) and one cloudpickle of ``{name: value}``: one pickle, so two names for one object
are still one object after a load.

What is saved: every user variable (not IPython's own names, its ``_``/``_iN`` history, or the
plugins under their own names, which the new kernel loads itself). A snapshot is all or nothing: if one variable cannot
be pickled (an open file or connection, a running generator, a lock) or the whole would pass the
size cap, nothing is written and the previous snapshot stays (it still matches its own round);
the answer names the culprits. Two things are made to come back as they were, not as copies:

* functions and classes defined in the chat read the kernel's live namespace for their globals
  (cloudpickle alone gives them a private copy, so ``global counter`` would stop working);
* a plugin held under another name (``f = send_mail``) is the new kernel's plugin of that name.

Objects that hold nothing any more (a closed file, a finished generator) are left out without
failing the snapshot; they are named as ``dropped``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import time
import types
from typing import Any, BinaryIO

MAGIC = b"weaver-snapshot 1\n"
_IPYTHON_NAMES = re.compile(r"_+|_i+|_i?\d+|_(oh|ih|dh)|In|Out|exit|quit|get_ipython")
_unpicklable: dict[str, int] = {}  # name -> id of the object that failed last time (fail fast)
PREVIOUS = ".prev"  # the snapshot before the latest, beside it (``path + PREVIOUS``)
MAX_LISTED = 500  # names in an answer (the server reads a bounded answer; ``count`` gives the total)


class _TooBig(Exception):
    """The snapshot passed its size cap."""


class _Capped(io.RawIOBase):
    """A file (or nothing, to measure) that refuses to grow past ``limit`` bytes."""

    def __init__(self, target: BinaryIO | None, limit: int) -> None:
        self.target, self.limit, self.size = target, limit, 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        count = memoryview(data).nbytes
        self.size += count
        if self.size > self.limit:
            raise _TooBig(self.size)
        if self.target is not None:
            self.target.write(data)
        return count


def _shell() -> Any:
    from IPython import get_ipython

    return get_ipython()


def _plugin_type() -> Any:
    from core.plugins.api import Plugin

    return Plugin


def _live_namespace() -> dict[str, Any]:
    """At load: the kernel's own namespace, for the globals of restored functions."""
    namespace: dict[str, Any] = _shell().user_ns
    return namespace


def _live_plugin(name: str) -> Any:
    """At load: the new kernel's plugin ``name`` (a saved reference to a plugin)."""
    value = _live_namespace().get(name)
    if not isinstance(value, _plugin_type()):
        raise LookupError(f"the plugin {name} is not loaded")
    return value


class _Namespace:
    """Stands for the kernel's namespace in a pickle; loads as the live one."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_live_namespace, ())


def _pickler_class() -> type:
    import cloudpickle

    class SnapshotPickler(cloudpickle.CloudPickler):  # type: ignore[misc, name-defined]
        def __init__(self, file: Any, namespace: dict[str, Any]) -> None:
            super().__init__(file, protocol=5)
            self.namespace = namespace
            self.stand_in = _Namespace()
            self.plugin_type = _plugin_type()

        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, self.plugin_type):
                return (_live_plugin, (obj.name,))
            reduced = super().reducer_override(obj)
            if isinstance(obj, types.FunctionType) and obj.__globals__ is self.namespace:
                reduced = self._live_globals(reduced)
            return reduced

        def _live_globals(self, reduced: Any) -> Any:
            """cloudpickle's function reduction with its copy of the globals swapped for the live ones."""
            copy = self.globals_ref.get(id(self.namespace))
            if copy is None or not isinstance(reduced, tuple) or len(reduced) < 2:
                return reduced
            args = tuple(self.stand_in if arg is copy else arg for arg in reduced[1])
            return (reduced[0], args, *reduced[2:])

    return SnapshotPickler


def _is_user_name(name: str, shell: Any) -> bool:
    return not (
        name in shell.user_ns_hidden
        or (name.startswith("__") and name.endswith("__"))
        or _IPYTHON_NAMES.fullmatch(name)
    )


def _dead(value: Any) -> bool:
    """Holds nothing any more: a closed file, a finished generator or coroutine."""
    if isinstance(value, io.IOBase):
        return bool(value.closed)
    if isinstance(value, types.GeneratorType):
        return value.gi_frame is None
    if isinstance(value, types.CoroutineType):
        return value.cr_frame is None
    return False


def _describe(value: Any) -> str:
    kind = type(value)
    return (
        kind.__qualname__ if kind.__module__ in ("builtins", "__main__") else f"{kind.__module__}.{kind.__qualname__}"
    )


def save(payload_json: str) -> str:
    """Save the user's variables: ``{"path", "max_bytes", "round_id"}`` in; the outcome as JSON out:
    ``status`` saved | unpicklable (``not_saved``: name -> type) | too_big (``bytes`` so far). Why
    a snapshot was not taken is noted beside it (``.why``), for the next load to say."""
    payload = json.loads(payload_json)
    path, limit = str(payload["path"]), int(payload["max_bytes"])
    started = time.monotonic()
    shell = _shell()
    namespace = shell.user_ns
    plugin_type = _plugin_type()
    values: dict[str, Any] = {}
    dropped: list[str] = []
    for name, value in list(namespace.items()):
        if not _is_user_name(name, shell) or (isinstance(value, plugin_type) and value.name == name):
            continue  # a plugin under its own name: the new kernel loads it (another name for it is kept)
        if _dead(value):
            dropped.append(name)
        else:
            values[name] = value
    known_bad = {n: _describe(values[n]) for n, i in _unpicklable.items() if n in values and id(values[n]) == i}
    if known_bad:
        return _note(path, {"status": "unpicklable", "not_saved": known_bad})
    _unpicklable.clear()
    header = {"round_id": payload.get("round_id"), "names": sorted(values), "dropped": sorted(dropped)}
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    part = path + ".part"
    pickler = _pickler_class()
    try:
        with open(part, "wb") as raw:
            sink = _Capped(raw, limit)
            sink.write(MAGIC + json.dumps(header).encode() + b"\n")
            pickler(sink, namespace).dump(values)
        if os.path.exists(path):  # kept one round back: a re-run of the last round starts from it
            os.replace(path, path + PREVIOUS)
        os.replace(part, path)
    except _TooBig as exc:
        _remove(part)
        return _note(path, {"status": "too_big", "bytes": int(exc.args[0]), "max_bytes": limit})
    except Exception:  # noqa: BLE001 - whatever a variable's pickling raises, name the culprits
        _remove(part)
        bad = _culprits(values, namespace, limit, pickler)
        _unpicklable.update({name: id(values[name]) for name in bad})
        return _note(path, {"status": "unpicklable", "not_saved": bad})
    _remove(path + ".why")
    return json.dumps(
        {
            "status": "saved",
            "names": header["names"][:MAX_LISTED],
            "dropped": header["dropped"][:MAX_LISTED],
            "count": len(header["names"]),
            "bytes": os.path.getsize(path),
            "seconds": round(time.monotonic() - started, 3),
        }
    )


def _note(path: str, outcome: dict[str, Any]) -> str:
    """Why the snapshot is older than the last round, kept beside it for the next load to tell."""
    try:
        with open(path + ".why", "w", encoding="utf-8") as why:
            json.dump(outcome, why)
    except OSError:
        pass
    return json.dumps(outcome)


def _why(path: str) -> dict[str, Any]:
    try:
        with open(path + ".why", encoding="utf-8") as why:
            note = json.load(why)
    except (OSError, ValueError):
        return {}
    return note if isinstance(note, dict) else {}


def _culprits(values: dict[str, Any], namespace: dict[str, Any], limit: int, pickler: type) -> dict[str, str]:
    """The variables that cannot be pickled on their own (measured, not written)."""
    bad: dict[str, str] = {}
    for name, value in values.items():
        try:
            pickler(_Capped(None, limit), namespace).dump(value)
        except _TooBig:
            continue
        except Exception:  # noqa: BLE001
            bad[name] = _describe(value)
    return bad or {"(the whole)": "a reference between variables"}


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def load(payload_json: str) -> str:
    """Load a snapshot into the namespace: ``{"path", "round_ids"}`` in (the rounds the server knows;
    a snapshot taken after another one is stale); JSON out: ``status`` loaded | none | stale |
    corrupt (``error``), and ``round_id``, ``names``, ``dropped``, ``why_older`` (why no later
    snapshot was taken). On any failure the namespace is as it was before.

    A stale snapshot (taken after a round the chat dropped: a re-run) gives way to the one before it
    (``path + PREVIOUS``), which then takes its place: the dropped round never comes back."""
    payload = json.loads(payload_json)
    path = str(payload["path"])
    answer = _load_one(path, payload)
    if json.loads(answer).get("status") != "stale" or not os.path.exists(path + PREVIOUS):
        return answer
    older = _load_one(path + PREVIOUS, payload)
    if json.loads(older).get("status") == "loaded":
        os.replace(path + PREVIOUS, path)
        _remove(path + ".why")
    return older


def _load_one(path: str, payload: dict[str, Any]) -> str:
    """``load`` of the snapshot at ``path``."""
    try:
        snapshot = open(path, "rb")
    except FileNotFoundError:
        return json.dumps({"status": "none"})
    shell = _shell()
    namespace = shell.user_ns
    before = dict(namespace)
    with snapshot:
        try:
            if snapshot.readline() != MAGIC:
                raise ValueError("not a snapshot of this version")
            header = json.loads(snapshot.readline())
            if header.get("round_id") not in payload.get("round_ids", []):
                return json.dumps({"status": "stale", "round_id": header.get("round_id")})
            values = pickle.load(snapshot)
            if not isinstance(values, dict):
                raise ValueError("the snapshot holds no variables")
        except Exception as exc:  # noqa: BLE001 - a damaged file: the server replays instead
            namespace.clear()
            namespace.update(before)
            return json.dumps({"status": "corrupt", "error": f"{type(exc).__name__}: {exc}"[:300]})
    # Loading functions wrote their globals into the namespace; IPython's own names are put back.
    for name in [n for n in namespace if not _is_user_name(n, shell)]:
        if name in before:
            namespace[name] = before[name]
        else:
            del namespace[name]
    for name, value in before.items():
        if not _is_user_name(name, shell):
            namespace[name] = value
    namespace.update({str(k): v for k, v in values.items() if _is_user_name(str(k), shell)})
    return json.dumps(
        {
            "status": "loaded",
            "round_id": header.get("round_id"),
            "names": sorted(str(k) for k in values)[:MAX_LISTED],
            "dropped": list(header.get("dropped", []))[:MAX_LISTED],
            "count": len(values),
            "why_older": _why(path),
        }
    )
