"""FedPer on scikit-learn's digits: a federated body, a private head per client (in ``ctx.state``)."""
