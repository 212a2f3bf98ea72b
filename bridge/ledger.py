"""Each worker's record of its calls in progress, so that a worker that dies still ends its calls.

The worker rewrites a small JSON file (`<state.directory>/worker-<sip port>.calls.json`) after each
event a call emits: call id, the next `seq`, when the call started, its utterance count and where its
last utterance ended. A replacement worker of the same index reads the file at start and emits
`call.ended` with reason `worker_lost` for every call listed, numbered after the last event the
receiver got, with the audio after the last utterance reported as a gap. The file is named after the
worker's SIP port, which no two bridges on one host can share. The file is replaced
atomically (write, then rename), which survives SIGKILL; it is not fsynced, so a power loss may lose it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class LedgerEntry:
    call_id: str
    next_seq: int
    started_at: float  # unix time the call was answered
    utterances: int = 0
    last_end: float = 0.0  # end of the last utterance on the call's timeline


class CallLedger:
    def __init__(self, directory: str | Path, sip_port: int) -> None:
        self.path = Path(directory) / f"worker-{sip_port}.calls.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, LedgerEntry] = {}

    def take_orphans(self) -> list[LedgerEntry]:
        """Calls a previous worker of this index left unfinished; the file is emptied."""
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError):
            logger.exception("unreadable call ledger %s; its calls cannot be ended", self.path)
            return []
        orphans = [LedgerEntry(**item) for item in raw.get("calls", [])]
        self._entries = {}
        self._write()
        return orphans

    def update(self, entry: LedgerEntry) -> None:
        self._entries[entry.call_id] = entry
        self._write()

    def forget(self, call_id: str) -> None:
        if self._entries.pop(call_id, None) is not None:
            self._write()

    def _write(self) -> None:
        doc: dict[str, Any] = {
            "written_at": time.time(),
            "calls": [asdict(e) for e in self._entries.values()],
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.path)


def lost_call_ended(entry: LedgerEntry, now: float) -> dict[str, Any]:
    """The `call.ended` data for a call whose worker died."""
    elapsed = max(0.0, now - entry.started_at)
    gap = max(0.0, elapsed - entry.last_end)
    return {
        "reason": "worker_lost",
        "duration": round(elapsed, 3),
        "audio_seconds": None,
        "utterances": entry.utterances,
        "transcript": None,
        "gaps": [{"start": round(entry.last_end, 3), "duration": round(gap, 3), "cause": "worker_lost"}],
    }
