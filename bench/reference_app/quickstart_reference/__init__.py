"""quickstart_reference: a quickstart-pytorch-style Flower app on fedcare's model and data."""
