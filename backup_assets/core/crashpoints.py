"""Named points of the crash-consistent storage writes, where a test may kill the process.

Production code calls `reached(name)` at each step of a write whose interruption must leave every stored
copy whole (core/locations/base.py, the rewrap in core/maintenance/rotation.py, the garbage collection
in core/maintenance/gc.py). Nothing happens unless a hook is installed: the kill tests install one in
a child process (backup_assets/testing/faults.py `kill_at`) that SIGKILLs that process at the n-th time
a named point is reached, so every step of a write is interrupted deterministically, not by timing.

Points (docs/STORAGE.md, "Crash consistency"):
  put.archive         the archive is stored under its new name; the manifest still names the old one
  local.archive_temp  local: the archive's bytes are in a hidden temporary file (not yet renamed)
  local.sidecar       local: the archive's checksum sidecar is written, the archive not yet renamed
  b2.old_versions     B2: a new version is uploaded, older versions of the name not yet deleted
  upload.progress     R2/B2: bytes of the archive are on their way (a multipart / large-file upload open)
  put.manifest        the manifest is switched to the new archive; the superseded one not yet deleted
  put.done            the superseded archive is deleted
  rewrap.copy         keys rewrap: one copy re-wrapped and stored, the next not yet begun
  prune.delete        prune: one backup past retention deleted, the next not yet
  gc.remove           garbage collection: one unreferenced object removed, the next not yet
"""

from __future__ import annotations

from collections.abc import Callable

_hook: Callable[[str], None] | None = None


def reached(name: str) -> None:
    """A named step of a write is done (a no-op unless a test installed a hook)."""
    if _hook is not None:
        _hook(name)


def armed() -> bool:
    """A hook is installed (writers then report progress they would not otherwise track)."""
    return _hook is not None


def install(hook: Callable[[str], None] | None) -> None:
    """Install (or, with None, remove) the hook called at every point."""
    global _hook
    _hook = hook
