"""How many bytes a message's content puts on the wire, as Flower 1.39 ships it.

Flower sends a message as a tree of objects (the RecordDict, each record, each Array and its
chunks), each deflated to bytes and pushed once per message; the sum of those deflated objects
is what travels, before gRPC's framing. This is the one place that reads Flower's object tree:
tests/common/test_wire_bytes.py fails when Flower changes it.

Deflating an Array caches its chunks (memoryviews) on the Array and its chunk objects, which makes the
content impossible to copy or pickle afterwards (Flower's SecAgg+ workflow copies the messages it sends);
so the count is taken on a copy, and the content is left as it was.
"""

from __future__ import annotations

import copy

from flwr.app import RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects


def content_bytes(content: RecordDict) -> int:
    """The deflated bytes of `content` and everything in it (an object shared twice is sent once)."""
    objects = get_all_nested_objects(copy.deepcopy(content)).values()
    return sum(len(obj.deflate()) for obj in objects)
