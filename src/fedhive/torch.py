"""Helpers for apps that train a PyTorch module.

``get_weights`` returns the module's ``state_dict`` as fedhive weights (numpy copies, in order,
buffers included); ``set_weights`` loads weights back in place after checking every name, shape and
dtype; ``pick_device`` chooses cuda, mps or cpu::

    from fedhive.torch import get_weights, pick_device, set_weights

    device = pick_device()  # or "cpu", "cuda", "cuda:1", "mps"
    model = Net().to(device)
    set_weights(model, weights)  # the weights fedhive handed the app
    train(model, data, device)
    return get_weights(model)
"""

from fedhive.learning.torch_weights import get_weights, pick_device, set_weights

__all__ = ["get_weights", "pick_device", "set_weights"]
