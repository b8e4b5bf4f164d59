"""The paper's hyper-parameter defaults, kept in one place.

Every other module reads its defaults from here, so that changing one of the
paper's settings is a one-line edit.  References are to Bassi, Dertkigil and
Cavalli, "Improving deep neural network generalization and robustness to
background bias via layer-wise relevance propagation optimization"
(Nature Communications, 2024).
"""

#: LRP-epsilon stabiliser used in every layer but the first (Alg. 1, step 2c).
EPSILON: float = 0.01
#: Use LRP-zB in the first convolution / linear layer (Alg. 10).
ZB: bool = True
#: Lowest and highest admissible input value for LRP-zB (images in [0, 1]).
ZB_LOW: float = 0.0
ZB_HIGH: float = 1.0
