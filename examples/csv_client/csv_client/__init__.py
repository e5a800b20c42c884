"""A fedhive client that trains on its own CSV file (``--node data=PATH``)."""
