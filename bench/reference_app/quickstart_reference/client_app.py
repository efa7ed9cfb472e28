"""quickstart_reference: the ClientApp, one handler per message type as in quickstart-pytorch."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from quickstart_reference.task import load_data, load_model
from quickstart_reference.task import test as test_fn
from quickstart_reference.task import train as train_fn

app = ClientApp()


def _setup(msg: Message, context: Context):
    """The global model from the message and this hospital's loaders."""
    model, schema = load_model(str(context.run_config["schema-path"]))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    trainloader, valloader = load_data(
        str(context.node_config["data-path"]),
        schema,
        batch_size=int(context.run_config["batch-size"]),
        validation_fraction=float(context.run_config["validation-fraction"]),
        seed=int(context.run_config["seed"]),
    )
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return model, trainloader, valloader, device


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received model on local data."""
    model, trainloader, _, device = _setup(msg, context)
    train_loss = train_fn(
        model,
        trainloader,
        int(context.run_config["local-epochs"]),
        float(msg.content["config"]["lr"]),
        device,
    )
    metrics = MetricRecord({"train_loss": train_loss, "num-examples": len(trainloader.dataset)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received model on local validation rows."""
    model, _, valloader, device = _setup(msg, context)
    eval_loss, eval_acc = test_fn(model, valloader, device)
    metrics = MetricRecord({"eval_loss": eval_loss, "eval_acc": eval_acc, "num-examples": len(valloader.dataset)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
