"""What ObjectLocation.put needs besides the write protocol (base.py): a manifest's stored bytes and
the archive's SHA-256 computed beside the upload."""

from __future__ import annotations

import os
import threading
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


# The staged archive goes to every location: hashed by its first put, not once per put. A digest is
# reused only while the file is the very one hashed, unwritten since: same device and inode, size,
# modification and change times (any write or replacement changes them), as seen before and after the
# hash. Bounded: forgetting only hashes again.
_DIGESTS: dict[tuple[str, tuple[int, ...]], tuple[str, int]] = {}
_DIGESTS_MAX = 256
_digests_lock = threading.Lock()


def _fingerprint(path: Path) -> tuple[int, ...]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hash_once(path: Path) -> tuple[str, int]:
    """sha256_file(path), or the digest of an earlier call on the same, unchanged file."""
    before = _fingerprint(path)
    key = (os.path.abspath(path), before)
    with _digests_lock:
        known = _DIGESTS.get(key)
    if known is not None:
        return known
    value = sha256_file(path)
    if _fingerprint(path) == before:  # unchanged while it was read: the digest is of these bytes
        with _digests_lock:
            if len(_DIGESTS) >= _DIGESTS_MAX:
                _DIGESTS.clear()
            _DIGESTS[key] = value
    return value


class BackgroundHash:
    """SHA-256 and size of a file, computed in a thread (hashlib releases the GIL on large buffers);
    a file an earlier put of this process hashed, unchanged since, is not read again (_hash_once)."""

    def __init__(self, path: Path):
        self._path, self._value, self._error = path, None, None
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = _hash_once(self._path)
        except OSError as exc:
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> tuple[str, int]:
        self._thread.join()
        if self._error is not None:
            raise PermanentStorageError(f"cannot read archive {self._path}: {self._error.strerror}") from None
        return self._value
