"""core/locations/memory.py: the one bounded record of what this process knows a backup folder holds."""

from __future__ import annotations

from backup_assets.core.locations.memory import UNKNOWN, FolderMemory


def test_first_put_is_true_once_per_location_and_only_for_ids_minted_here():
    memory = FolderMemory()
    assert not memory.first_put("r2://b/", "t", "b1")  # another process's id: the put lists
    memory.minted("t", "b1")
    assert memory.first_put("r2://b/", "t", "b1")
    assert not memory.first_put("r2://b/", "t", "b1")  # a retry lists
    assert memory.first_put("b2://b/", "t", "b1")  # another location: its own first put
    memory.forget("r2://b/", "t", "b1")  # a delete, maybe half done: every later put lists
    assert not memory.first_put("file:///x/", "t", "b1")


def test_what_a_put_or_a_read_learnt_is_kept_per_location():
    memory = FolderMemory()
    assert memory.named("r2://b/", "t", "b") == UNKNOWN
    memory.stored("r2://b/", "t", "b", "ab" * 32, absent={"verified.json"})
    assert memory.named("r2://b/", "t", "b") == "ab" * 32 and memory.named("b2://b/", "t", "b") == UNKNOWN
    assert memory.take_absent("r2://b/", "t", "b", "verified.json")
    assert not memory.take_absent("r2://b/", "t", "b", "verified.json")  # written once: no longer absent
    memory.stored("r2://b/", "t", "b", None)  # a manifest read that states no digest; absent kept as it was
    assert memory.named("r2://b/", "t", "b") is None
    memory.forget("r2://b/", "t", "b")
    assert memory.named("r2://b/", "t", "b") == UNKNOWN


def test_the_record_is_bounded_and_forgets_the_least_recently_written():
    memory = FolderMemory(limit=3)
    for n in range(3):
        memory.stored("r", "t", f"b{n}", f"{n}")
    assert memory.named("r", "t", "b0") == "0"
    memory.stored("r", "t", "b0", "0")  # used again: now the most recent
    memory.stored("r", "t", "b3", "3")  # one too many: b1, the least recently written, goes
    assert [memory.named("r", "t", f"b{n}") for n in range(4)] == ["0", UNKNOWN, "2", "3"]
    for n in range(5):
        memory.minted("t", f"m{n}")
    assert not memory.first_put("r", "t", "m0") and memory.first_put("r", "t", "m4")
