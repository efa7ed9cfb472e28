"""A message's content as one object on the wire, instead of one per record, array and array chunk.

Flower 1.39 moves a message as a tree of objects: the message, its RecordDict, each record, each array of an
ArrayRecord and each chunk of an array, and every one of them is a request of its own at each hop (the ServerApp
pushes it to the SuperLink, the SuperNode pulls it, the ClientApp pulls it from the SuperNode, and the reply
back the same way). A plain round's train message and reply were 8 and 10 objects: about 100 requests a
round through the SuperLink, each a few milliseconds of its CPU and one more wait on a two-core machine.

Here a RecordDict deflates into one object that holds its records whole, in Flower's own protobuf form
(`flwr.common.serde.recorddict_to_proto`), behind `FLAT_MARK`; a message is then two objects. Inflating reads
both forms, so a reply deflated the stock way (a failure the warm executor answers for a dead child, a stock
SuperNode's) still arrives. Only the apps' processes (the warm executors' children) deflate and inflate
content; the SuperLink and the SuperNodes store objects by their hash without looking inside, so they need
nothing. A site whose fedcare predates this cannot read the flat form: every site of a federation runs the
same fedcare release (docs/registration.md, "The hospital's side").
"""

from __future__ import annotations

import importlib
from typing import Any

FLAT_MARK = b"fedcare-flat-recorddict/1\n"  # first bytes of a flat RecordDict's body; the version is in the mark


def flatten_record_dicts() -> None:
    """Make this process deflate every RecordDict flat (and inflate either form). Idempotent."""
    from flwr.app import RecordDict

    if getattr(RecordDict, "_fedcare_flat", False):
        return
    serde = importlib.import_module("flwr.common.serde")
    inflatable = importlib.import_module("flwr.supercore.inflatable.inflatable_object")
    proto_type = importlib.import_module("flwr.proto.recorddict_pb2").RecordDict
    stock_inflate = RecordDict.inflate.__func__  # type: ignore[attr-defined]

    def deflate(self: Any) -> bytes:
        body = FLAT_MARK + serde.recorddict_to_proto(self).SerializeToString()
        return inflatable.add_header_to_object_body(object_body=body, obj=self)

    def inflate(cls: type, object_content: bytes, children: dict[str, Any] | None = None) -> Any:
        body = inflatable.get_object_body(object_content, cls)
        if not body.startswith(FLAT_MARK):
            return stock_inflate(cls, object_content, children)
        if children:
            raise ValueError(f"a flat RecordDict has no children, got {len(children)}")
        proto = proto_type()
        proto.ParseFromString(body[len(FLAT_MARK) :])
        return serde.recorddict_from_proto(proto)

    RecordDict.children = property(lambda self: None)  # type: ignore[assignment,method-assign]
    RecordDict.deflate = deflate  # type: ignore[method-assign]
    RecordDict.inflate = classmethod(inflate)  # type: ignore[assignment,method-assign]
    RecordDict._fedcare_flat = True  # type: ignore[attr-defined]
