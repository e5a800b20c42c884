"""Adapters that run code written for other federated learning frameworks on fedhive."""
