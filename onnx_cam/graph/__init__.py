"""The graph rewriter: expose layers, find the score, add the gradient subgraph."""

from onnx_graphsurgeon.logger import G_LOGGER

# graphsurgeon warns about its optional "colored" module and benign renames
G_LOGGER.severity = G_LOGGER.ERROR
