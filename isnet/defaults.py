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

# -- heatmap loss (Section 4.3, Appendix A) ---------------------------------------------------
#: Saturation constant of f(x) = x / (x + E) (Eq. 16).
E: float = 1.0
#: Weights of the background loss L1 and the foreground loss L2 in L_LRP (Eq. 5).
W1: float = 1.0
W2: float = 3.0
#: Natural range [C1, C2] of total absolute foreground relevance (Eq. 20, Appendix F.3, DenseNet121).
C1: float = 1.0
C2: float = 25.0
#: Small constant added to the denominators of Eq. 12 (0/0 := 0).
NORMALISATION_E: float = 1e-10
#: f(r) is clamped to [0, 1 - CLAMP] before the cross-entropy of Eq. 17.
CLAMP: float = 1e-7

# -- optimisation (Appendix F.2) ---------------------------------------------------------------
#: The paper's optimiser: SGD, momentum 0.99, learning rate 1e-3, constant (the shipped configs'
#: setting, and that of the comparison systems).
LEARNING_RATE: float = 1e-3
MOMENTUM: float = 0.99
WEIGHT_DECAY: float = 0.0
GRADIENT_CLIP_NORM: float = 1.0
#: Train ISNets with channels-last tensors: on the CPU their relevance pass's convolutions
#: run about twice as fast (``benchmarks/training_speed.py``); not a setting of the paper.
CHANNELS_LAST: bool = True

# -- training from a random start (not settings of the paper; README "Training") --------------
#: Balance P of the ISNet loss (the paper's COVID-19 / tuberculosis setting, Appendix F.2).
P: float = 0.7
#: GWRP decay d of the background loss: 0.996, one of the three values the paper suggests (0.9, 0.996,
#: 1; its facial-attribute setting).  GWRP weighs about the top 1 / (1 - d) background pixels: 250 at
#: 0.996, 10 at 0.9, where a bias spread over a few hundred pixels (a stripe) went unpunished.
D: float = 0.996
#: Heatmap-loss warm-up: P rises linearly from 0 to its value over this many epochs.  At a random
#: start the gradient of the heatmap loss is 3 to 40 times that of the classification loss
#: (measured on a small CNN), so with the full P from step 0 the network is shaped by the heatmaps
#: before it classifies at all.
HEATMAP_WARMUP_EPOCHS: float = 5.0
#: Heatmap-loss gate: the heatmap loss (and its warm-up) starts after the first epoch whose mean training
#: classification loss is below this share of chance's (ln K), at the latest after HEATMAP_GATE_LIMIT of
#: the epochs.  With background swap the classifier must learn the foreground itself, which is slower;
#: with the heatmap loss from the first epochs an ISNet on a border-biased digits dataset reached only
#: 0.62 training accuracy in 60 epochs (L_C 0.99, chance 1.10), where a standard classifier on the same
#: swapped images reached 0.88 validation accuracy.
HEATMAP_GATE: float | None = 0.7
HEATMAP_GATE_LIMIT: float = 1 / 3
#: Automatic C1, C2 (``C1=None``, ``C2=None``): from the mean m and standard deviation s of the
#: current model's total absolute foreground relevance, C1 = max(m * AUTO_C1_FRACTION,
#: m - AUTO_C_SPREAD * s), C2 = min(AUTO_C2_RATIO * C1, m + AUTO_C_SPREAD * s), measured over the
#: last epoch of the heatmap-loss warm-up.
AUTO_C_SPREAD: float = 3.0
#: An automatic range is measured again over every later epoch and only ever raised.  Measured once,
#: at the end of a 5-epoch warm-up, it caps the foreground relevance, and with it the logits, at what
#: a barely trained classifier had: on a border-biased digits dataset with background swap, C2 = 1.82
#: held the ISNet at training accuracy 0.62 and L_C 0.99 (chance: 1.10) after 60 epochs.
RANGE_FOLLOWS: bool = True
AUTO_C1_FRACTION: float = 0.2
AUTO_C2_RATIO: float = 25.0

#: Counterfactual backgrounds during an ISNet's training (``background_swap``, not a setting of the
#: paper): the share of each training batch's images whose foreground is put on the background of
#: another image of the batch.  Every image (1.0): a background then carries no class information at
#: all, so no background shortcut can be learned, however it hides from the heatmaps.  Without it the
#: ISNet on a stripe-biased digits dataset learned the stripe and hid it from LRP-epsilon by
#: cancelling relevance (Appendix F.5; biased / standard / deceiving macro-F1 1.000 / 0.470 / 0.000);
#: with half of each batch swapped it dropped 0.086 from biased to deceiving, with every image
#: -0.022 (README "Your data").
BACKGROUND_SWAP: float = 1.0

#: Strength in [0, 1] of a random tone curve, contrast, brightness and noise given to every swapped
#: background (``background_jitter``, not a setting of the paper): the swap shows the ISNet only the
#: backgrounds of its training sources, and a background unlike all of them (a new scanner, another
#: site) can still move its decisions; the jitter asks for decisions that hold under such changes.
#: On the radiograph benchmark's unseen sources (seed 0) the ISNet's external macro-F1 rose from 0.673
#: (swap alone) to 0.993, its background share of relevance there fell from 21% to 6% (README "Training").
BACKGROUND_JITTER: float = 1.0

#: ISNetModule's (``isnet fit --method isnet`` / ``standard``) optimiser: Adam, beta1 0.9, learning
#: rate 1e-3, cosine-annealed to 0 over the run.  Not the paper's: on small data from a random start
#: SGD with momentum 0.99 let the ISNet's accuracy collapse to chance after 23 epochs (spikes of the
#: foreground loss carried by the momentum), see README "Training".
ISNET_OPTIMIZER: str = "adam"
ISNET_LEARNING_RATE: float = 1e-3
ISNET_MOMENTUM: float = 0.9
ISNET_LR_SCHEDULE: str = "cosine"

# -- the Faster ISNet family (Bassi, Decherchi and Cavalli, IEEE Access 2024) --------------------
#: The class whose softmax quantity eta a Selective ISNet heatmap explains: the lowest logit, as the
#: authors' code takes it (their text speaks of the highest).  On the digits benchmark both kept the
#: decisions free of the background at the same accuracy, and the lowest left less background relevance
#: in the logits' heatmaps (README "The Faster ISNet family").
SELECTIVE_CLASS: str = "lowest"
#: ``e`` of the selective quantity ``eta_c = log(p_c + e) - log(1 - p_c + e)``: 0 gives the exact
#: log-odds ``z_c - logsumexp_{k != c} z_k``, whose maps keep a logit's scale however confident the
#: model; the authors' code uses 0.01, whose maps vanish as the softmax saturates
#: (:mod:`isnet.lrp.quantities`).
SELECTIVE_EPS: float = 0.0
