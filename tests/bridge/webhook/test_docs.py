"""The receiver snippet in docs/webhook.md verifies what the bridge signs."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from bridge.webhook import payload

DOC = Path(__file__).parents[3] / "docs" / "webhook.md"


def test_the_documented_receiver_verifies_our_signature() -> None:
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    verify = namespace["verify"]
    body = '{"type":"utterance","text":"ça"}'.encode()
    header = payload.sign(b"secret", int(time.time()), body)
    assert verify(b"secret", header, body)
    assert not verify(b"secret", header, body + b" ")
    assert not verify(b"other", header, body)
    assert not verify(b"secret", payload.sign(b"secret", int(time.time()) - 3600, body), body)
    assert not verify(b"secret", "v1=abc", body)
