"""What a forked child tells the warm executor's parent over a pipe: which message it serves (as soon as it
has pulled it) and that its reply went out. A child that dies between the two leaves the parent to answer.

Frames are one kind byte, a 4-byte big-endian length and the payload; a pipe may split them anywhere.
"""

from __future__ import annotations

import os
import pickle
import struct
from dataclasses import dataclass, field

from fedcare.flower_internals import ServedMessage

_INPUT, _REPLIED = b"I", b"R"


def _write_frame(fd: int, kind: bytes, payload: bytes = b"") -> None:
    os.write(fd, kind + struct.pack("!I", len(payload)) + payload)


@dataclass
class ChildReport:
    """What a child told its parent before it ended."""

    served: ServedMessage | None = None
    replied: bool = False
    cpu_seconds: float = 0.0  # the child's CPU time, its reaped descendants' included (when it was reaped)
    buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 5:
            kind, size = self.buffer[:1], struct.unpack("!I", self.buffer[1:5])[0]
            if len(self.buffer) < 5 + size:
                return
            payload = bytes(self.buffer[5 : 5 + size])
            del self.buffer[: 5 + size]
            if kind == _INPUT:
                self.served = pickle.loads(payload)
            elif kind == _REPLIED:
                self.replied = True
