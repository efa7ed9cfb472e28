"""How many bytes a message's content puts on the wire, as Flower 1.39 ships it.

Flower sends a message as a tree of objects (the RecordDict, each record, each Array and its
chunks), each deflated to bytes and pushed once per message; the sum of those deflated objects
is what travels, before gRPC's framing. In fedcare's apps the whole RecordDict is one object
(fedcare/flower_internals/flat_records.py), and the count is that object's bytes. This is the one place
that reads Flower's object tree: tests/common/test_wire_bytes.py fails when Flower changes it.

Deflating an Array caches its chunks (memoryviews) on the Array, which makes the content impossible to
copy or pickle afterwards (Flower's SecAgg+ workflow copies the messages it sends); the cache is dropped
again from every Array in the content, so counting leaves the content as it was. Every Array, not only
those the object tree lists: two Arrays with the same bytes (a GroupNorm's ones, say) share one object id,
so the tree lists one of them while both got a cache.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects


def content_bytes(content: RecordDict) -> int:
    """The deflated bytes of `content` and everything in it (an object shared twice is sent once)."""
    total = sum(len(obj.deflate()) for obj in get_all_nested_objects(content).values())
    for record in content.values():
        if isinstance(record, ArrayRecord):
            for array in record.values():
                array.__dict__.pop("_chunks", None)  # Array's own cache of its chunks, as Array.__setattr__ drops it
    return total
