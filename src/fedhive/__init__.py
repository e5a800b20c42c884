"""fedhive: federated learning, one engine for every topology."""

__version__ = "0.1.0"
