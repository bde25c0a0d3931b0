"""A Dask scheduler preload for tests (`dask scheduler --preload tests/dask_payload_recorder.py`):
records every task graph a client sends, exactly as it arrives (the serialized frames of the
update-graph message and everything else in it, pickled), one file per message under
$TB_TEST_PAYLOAD_DIR, before the scheduler reads it. tests/test_three_machines.py greps them for
secrets and paths."""

from __future__ import annotations

import os
import pickle
import uuid
from pathlib import Path


def dask_setup(scheduler) -> None:
    directory = Path(os.environ["TB_TEST_PAYLOAD_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    original = scheduler.stream_handlers["update-graph"]

    async def recording(**message):
        serialized = message.get("expr_ser")
        frames = [bytes(f) for f in getattr(serialized, "frames", ())]
        rest = {k: v for k, v in message.items() if k != "expr_ser"}
        try:
            extra = pickle.dumps((getattr(serialized, "header", None), rest))
        except Exception as exc:  # noqa: BLE001 - recorded as what could not be pickled
            extra = repr((rest, exc)).encode()
        try:  # and as the scheduler will read it (in case the frames were compressed)
            import cloudpickle
            from distributed.protocol import deserialize

            extra += cloudpickle.dumps(deserialize(serialized.header, serialized.frames))
        except Exception as exc:  # noqa: BLE001
            extra += repr(exc).encode()
        (directory / f"{uuid.uuid4().hex}.bin").write_bytes(b"".join(frames) + b"\0FRAMES-END\0" + extra)
        return await original(**message)

    scheduler.stream_handlers["update-graph"] = recording
