"""Check Gated's backward against central finite differences in float64 (input and every parameter).

    cd examples/custom_layer && python gradcheck_gated.py
"""

import numpy as np
from myblocks import Gated

from distnet.nn.layers.gradcheck import check_layer

layer = Gated(width=5)
layer.build((7,), np.float64, np.random.default_rng(0))
check_layer(layer, np.random.default_rng(1).standard_normal((4, 7)))
print("Gated: backward matches finite differences (input, W, b, V, c)")
