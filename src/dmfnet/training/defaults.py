"""The training recipe every model gets by default, in one place (no torch import here, so
the command line can show these values without loading torch).

Each value was chosen on validation splits (docs/model-study.md says how and why).
"""

from __future__ import annotations

EPOCHS = 40  # at most
PATIENCE = 10  # epochs without a better validation macro-F1 (ties: lower loss) before stopping; 0: never
LR = 1e-3  # AdamW
WEIGHT_DECAY = 1e-2  # AdamW
SCHEDULE = "cosine"  # "constant", or "cosine": one epoch of warm-up, then cosine decay
EMA = 0.99  # decay of the moving average of the weights that is validated and kept; 0: off
MIN_STEPS_PER_EPOCH = 128  # auto batch size: the largest power of two in [32, 256] giving
MIN_BATCH, MAX_BATCH = 32, 256  # at least this many optimiser steps an epoch
