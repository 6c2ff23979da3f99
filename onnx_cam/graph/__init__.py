"""The graph rewriter: expose layers, find the score, add the gradient subgraph."""

import onnx_graphsurgeon as gs

# graphsurgeon logs warnings about its optional "colored" module and benign renames
gs.logger.severity = gs.logger.ERROR
