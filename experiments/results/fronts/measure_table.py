"""Measures the cost table the measured fronts share (ldjax.train.budget.measure)."""
import json, sys, time
import jax
from ldjax.data.datasets import load_dataset
from ldjax.models.zoo import build_model
from ldjax.runs.config import TrainConfig, recipe
from ldjax.train.assembly import measured_table
data = load_dataset("idx:/usr/share/datasets/fashion-mnist", train_size=3500)
model = build_model("resnet18", data.image_shape, data.num_classes, width=0.25)
cfg = TrainConfig(model="resnet18", width=0.25, batch_size=128, augment="flip,crop",
                  budget=8.0, cost_table="measure", val_size=500, **recipe("strong"))
t0 = time.perf_counter()
table = measured_table(model, data, cfg, model.init(jax.random.key(0), data.image_shape))
out = table.to_json()
json.dump(out, open(sys.argv[1], "w"), indent=1)
print(f"measured in {time.perf_counter() - t0:.0f} s; load {open('/proc/loadavg').read().split()[:3]}")
t = table
print("head step / whole step:", {c: round(t.train[c, c] / t.train[0, 0], 3) for c in range(1, 9)})
print("freeze step / whole step:", {c: round(t.train[0, c] / t.train[0, 0], 3) for c in range(1, 9)})
