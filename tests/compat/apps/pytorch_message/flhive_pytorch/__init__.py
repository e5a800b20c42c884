"""flhive-pytorch: a Flower / PyTorch app."""
