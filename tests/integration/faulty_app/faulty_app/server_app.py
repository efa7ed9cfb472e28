"""Send each behaviour to every node, one after the other, and write down what came back."""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    timeout = float(context.run_config["reply-timeout"])
    deadline = time.monotonic() + timeout
    while not (nodes := sorted(grid.get_node_ids())) and time.monotonic() < deadline:
        time.sleep(0.1)
    answers = []
    for behaviour in str(context.run_config["behaviours"]).split(","):
        started = time.monotonic()
        content = RecordDict({"ask": ConfigRecord({"do": behaviour})})
        messages = [Message(content, dst_node_id=n, message_type=f"query.{behaviour}") for n in nodes]
        pending = set(grid.push_messages(messages))
        while pending and time.monotonic() - started < timeout:
            for reply in grid.pull_messages(pending):
                pending.discard(reply.metadata.reply_to_message_id)
                answer: dict[str, object] = {"behaviour": behaviour, "seconds": time.monotonic() - started}
                if reply.has_error():
                    answer["error"] = reply.error.reason
                else:
                    answer.update(dict(reply.content["answer"]))
                answers.append(answer)
            time.sleep(0.05)
        answers += [{"behaviour": behaviour, "error": "no reply"} for _ in pending]
    Path(str(context.run_config["results"])).write_text(json.dumps(answers, indent=1))
