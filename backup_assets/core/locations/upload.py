"""What ObjectLocation.put needs besides the write protocol (base.py): a manifest's stored bytes and
the archive's SHA-256 computed beside the upload."""

from __future__ import annotations

from pathlib import Path

from ..archive.manifest import Manifest
from ..errors import PermanentStorageError
from ..files import sha256_file


def stored_bytes(manifest: Manifest) -> bytes:
    """What a location writes as manifest.json: Manifest.to_json (docs/MANIFEST.md)."""
    if not isinstance(manifest, Manifest):
        raise PermanentStorageError(f"not a manifest: a {type(manifest).__name__} (core/archive/manifest.py Manifest)")
    try:
        return manifest.to_json().encode()
    except (TypeError, ValueError) as exc:
        raise PermanentStorageError(f"manifest is not JSON-serialisable: {exc}") from None


class BackgroundHash:
    """SHA-256 and size of a file, computed in a thread (hashlib releases the GIL on large buffers)."""

    def __init__(self, path: Path):
        import threading

        self._path, self._value, self._error = path, None, None
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = sha256_file(self._path)
        except OSError as exc:
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> tuple[str, int]:
        self._thread.join()
        if self._error is not None:
            raise PermanentStorageError(f"cannot read archive {self._path}: {self._error.strerror}") from None
        return self._value
