"""A federated MNIST example: your own CNN and training loop, run by fedhive."""
