"""A worker stand-in for the crash-point tests: a WebhookSink and a CallLedger in one process, used as
`bridge.worker` and `bridge.call` use them.

    python worker_child.py SPOOL URL STATE_DIR INDEX CALL_PREFIX CALLS UTTERANCES MODE

At start it ends the calls its previous life left (`bridge.ledger.end_lost_calls`, as the worker does)
and prints ``STARTED <lost calls>``. Then, by MODE, it submits CALLS calls (interleaved, as concurrent
calls are), recording each event in the ledger right after submitting it, as `CallPipeline._emit` does:
- ``open``: every event but call.ended (the calls are still up), then ``PERSISTED`` once spooled;
- ``full``: every event, call.ended included, then ``PERSISTED``;
- ``idle``: none.
It then keeps delivering until killed. With ``VBLAZE_BRIDGE_CRASH_AT`` set it kills itself at that
point (`bridge.webhook.crashpoint`).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from children import child_settings
from factory import call_events

from bridge.ledger import CallLedger, LedgerEntry, end_lost_calls
from bridge.webhook.delivery import WebhookSink


async def main(
    spool: str, url: str, state: str, index: int, prefix: str, calls: int, utterances: int, mode: str
) -> None:
    sink = WebhookSink(child_settings(spool, url))
    await sink.start()
    ledger = CallLedger(state, 5080 + index)
    lost = end_lost_calls(ledger, sink)
    print(f"STARTED {len(lost)}", flush=True)
    if mode != "idle":
        per_call = [call_events(f"{prefix}{i}", utterances=utterances) for i in range(calls)]
        entries = {e[0].call_id: LedgerEntry(e[0].call_id, 0, e[0].time) for e in per_call}
        for batch in zip(*per_call, strict=True):
            for event in batch:
                if mode == "open" and event.kind == "call.ended":
                    continue
                sink.submit(event)
                entry = entries[event.call_id]
                if event.kind == "call.ended":
                    ledger.forget(event.call_id)
                else:
                    entry.next_seq = event.seq + 1
                    if event.kind == "utterance":
                        entry.utterances += 1
                        entry.last_end = event.data["end"]
                    ledger.update(entry)
            await asyncio.sleep(0.005)
        await sink.wait_persisted(10)
        print("PERSISTED", flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    spool, url, state, index, prefix, calls, utterances, mode = sys.argv[1:]
    asyncio.run(main(spool, url, state, int(index), prefix, int(calls), int(utterances), mode))
