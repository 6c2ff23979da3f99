"""Modified ReLU backward rules, swapped in for one build (add_gradients(overrides=...)).

They are not registered: the true gradient stays the default everywhere else.
"""

from __future__ import annotations

import numpy as np


def guided_relu(b, node, grads, wants):
    """Guided Backpropagation (Springenberg et al. 2015): only positive gradients pass, and
    only where the forward ReLU was active: ReLU(g) * (y > 0)."""
    y, g = node.outputs[0], grads[0]
    active = b.op("Greater", [y, np.float32(0)], dtype=np.bool_)
    return [b.where(active, b.op("Relu", [g]), np.float32(0))]


def deconvolution_relu(b, node, grads, wants):
    """Deconvolution (Zeiler & Fergus 2014): the ReLU of the gradient, whatever the forward
    activation was: ReLU(g)."""
    return [b.op("Relu", [grads[0]])]


RELU_RULES = {"guided": guided_relu, "deconvolution": deconvolution_relu}
