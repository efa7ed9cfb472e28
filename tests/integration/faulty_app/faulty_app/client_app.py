"""A ClientApp that does what the message type says: answer, exit, segfault, hang or raise."""

from __future__ import annotations

import os
import signal
import time

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query("ok")
def ok(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"answer": ConfigRecord({"pid": os.getpid(), "ppid": os.getppid()})}), reply_to=msg)


@app.query("crash")
def crash(msg: Message, context: Context) -> Message:
    os._exit(3)


@app.query("segfault")
def segfault(msg: Message, context: Context) -> Message:
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(60)
    raise AssertionError("unreachable")


@app.query("hang")
def hang(msg: Message, context: Context) -> Message:
    time.sleep(3600)
    raise AssertionError("unreachable")


@app.query("raise")
def fail(msg: Message, context: Context) -> Message:
    raise RuntimeError("the ClientApp raised on purpose")
