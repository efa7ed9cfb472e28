"""quickstart_reference: the ServerApp, stock FedAvg driven by `strategy.start`."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from quickstart_reference.task import load_model

app = ServerApp()


def _aggregate_and_count(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """FedAvg's default metric aggregation, plus how many hospitals replied."""
    metrics = aggregate_metricrecords(records, weighting_key)
    metrics["replies"] = len(records)
    return metrics


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run FedAvg: each round one train and one evaluate message per hospital."""
    num_rounds: int = int(context.run_config["num-server-rounds"])
    fraction_train: float = float(context.run_config["fraction-train"])
    fraction_evaluate: float = float(context.run_config["fraction-evaluate"])
    min_nodes: int = int(context.run_config["min-nodes"])
    lr: float = float(context.run_config["learning-rate"])

    torch.manual_seed(int(context.run_config["seed"]))
    global_model, _ = load_model(str(context.run_config["schema-path"]))
    arrays = ArrayRecord(global_model.state_dict())

    strategy = FedAvg(
        fraction_train=fraction_train,
        fraction_evaluate=fraction_evaluate,
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
        train_metrics_aggr_fn=_aggregate_and_count,
        evaluate_metrics_aggr_fn=_aggregate_and_count,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=arrays,
        num_rounds=num_rounds,
        train_config=ConfigRecord({"lr": lr}),
    )

    # Not in the quickstart: a benchmark must not time rounds in which hospitals failed.
    for kind, history in (("train", result.train_metrics_clientapp), ("evaluate", result.evaluate_metrics_clientapp)):
        short = [r for r in range(1, num_rounds + 1) if r not in history or history[r]["replies"] < min_nodes]
        if short:
            raise RuntimeError(f"{kind}: fewer than {min_nodes} hospitals replied in round(s) {short}")
