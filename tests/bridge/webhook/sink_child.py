"""A worker stand-in for the crash and multi-process tests: one WebhookSink in its own process.

    python sink_child.py SPOOL URL CALL_PREFIX CALLS UTTERANCES MODE

Submits CALLS calls of events (interleaved, as concurrent calls are), then by MODE:
- ``hold``: waits until they are spooled, prints ``PERSISTED`` and keeps delivering until killed;
- ``deliver``: closes the sink, which delivers within 60 s, and prints ``DONE`` if all went out.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from children import child_settings
from factory import call_events

from bridge.webhook.delivery import WebhookSink


async def main(spool: str, url: str, prefix: str, calls: int, utterances: int, mode: str) -> None:
    sink = WebhookSink(child_settings(spool, url))
    await sink.start()
    per_call = [call_events(f"{prefix}{i}", utterances=utterances) for i in range(calls)]
    for batch in zip(*per_call, strict=True):
        for event in batch:
            sink.submit(event)
        await asyncio.sleep(0.005)
    await sink.wait_persisted(10)
    if mode == "hold":
        print("PERSISTED", flush=True)
        await asyncio.sleep(3600)
    await sink.aclose(60)  # delivers what it can within the bound
    print("DONE" if sink.pending == 0 else f"LEFT {sink.pending}", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    spool, url, prefix, calls, utterances, mode = sys.argv[1:]
    asyncio.run(main(spool, url, prefix, int(calls), int(utterances), mode))
