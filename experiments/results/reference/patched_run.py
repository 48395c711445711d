"""python experiments/results/reference/patched_run.py INIT [ldjax.run args]: ldjax.run with
the small-image VGG classifier initialised by INIT, to reproduce the "before" runs:
torch01 = N(0, 0.01) (torchvision's, ldjax's before the fix), lecun = lecun-normal (the fix,
ldjax's default now), torchdefault = PyTorch nn.Linear's default U(+-1/sqrt(fan_in))."""
import sys

import flax.linen as nn

import ldjax.models.zoo as zoo

INITS = {"torch01": nn.initializers.normal(0.01),
         "lecun": nn.initializers.lecun_normal(),
         "torchdefault": nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")}
zoo.small_dense_init = INITS[sys.argv[1]]
from ldjax.run import main  # noqa: E402

sys.exit(main(sys.argv[2:]))
