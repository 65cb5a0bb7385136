"""The one way the server reads, lists and writes files in a session's folder.

A session's folder is written by user code at the same time as the server reads it, so a name
checked a moment ago may be a symlink (to a root-only file, to ``/proc/self/environ``), a FIFO or
a hard link by the time the server opens it. Every function here therefore works on *open
handles*, never on a path that is checked and then opened again:

- a path inside the folder is opened without following any symlink in any component:
  ``openat2(2)`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
  RESOLVE_NO_XDEV`` where the kernel has it, else one component at a time with ``O_NOFOLLOW``
  relative to the folder's descriptor (the leaf also ``O_NONBLOCK``, so a FIFO cannot hang us);
- the opened handle is checked with ``fstat``: a regular file, on the folder's device, with one
  name only (a hard link could name a file from elsewhere), within the caller's size limit;
- callers get the bytes or the open file, and a refusal is an ``UnsafeFile`` naming the file
  and the reason, written for the user;
- writes go to a fresh hidden name (``O_CREAT | O_EXCL | O_NOFOLLOW``) in the opened parent
  folder, are given to the owner of the session folder, and are renamed into place (a rename
  replaces a symlink itself, never what it points to).

Opening and the handle checks are in ``opening.py``, listing in ``listing.py``, writing in
``writing.py``; import them from here.
"""

from core.safe_files.listing import MAX_WALKED, Entry, Found, Progress, Usage, Walk, entries, folder_bytes, usage, walk
from core.safe_files.opening import (
    MAX_PARTS,
    OpenedFile,
    Refusal,
    UnsafeFile,
    open_beneath,
    open_file,
    open_plain,
    open_root,
    openat2_available,
    read_file,
    relative_name,
    split_path,
)
from core.safe_files.writing import TEMP_PREFIX, NewFile, numbered, write_file, write_new

__all__ = [
    "MAX_PARTS",
    "MAX_WALKED",
    "TEMP_PREFIX",
    "Found",
    "NewFile",
    "OpenedFile",
    "Refusal",
    "UnsafeFile",
    "Usage",
    "Walk",
    "Entry",
    "Progress",
    "folder_bytes",
    "numbered",
    "open_beneath",
    "open_file",
    "open_plain",
    "open_root",
    "openat2_available",
    "read_file",
    "relative_name",
    "split_path",
    "walk",
    "entries",
    "usage",
    "write_file",
    "write_new",
]
