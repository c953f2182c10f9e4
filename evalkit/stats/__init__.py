"""Statistics as pure functions over arrays: numpy and scipy only, the seed passed in.

The defaults of every interval and test are stated here, once: compare, the gate, the rating and
bias reports and the CLI all read them (this module imports nothing, so the CLI can).
"""

ALPHA = 0.05  # intervals at 95% confidence, tests at the 5% level
N_RESAMPLES = 2000  # bootstrap resamples: each 2.5% tail of a 95% interval rests on 50 draws
MIN_RESAMPLES = 1000  # the least a gate or a comparison accepts: fewer make noisy interval ends
SEED = 0
