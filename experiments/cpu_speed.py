"""CPU speed of one ResNet-18 (width 0.25) train step: PyTorch vs plain JAX/Flax variants.

Issue 15, item 7. Every variant runs in its own subprocess (XLA_FLAGS must be
set before jax is imported), and the variants are interleaved: each round runs
all of them once, in a rotated order, so a noisy neighbour on the shared CPU
hits every variant alike. Per variant and round a worker

- builds the model (the small-image ResNet-18 of `ldjax.models.zoo` at width
  0.25, 701,178 parameters: PyTorch, a plain Flax copy with a pluggable
  convolution and layout, or ldjax's own stages applied in a plain loop),
- loads the embedded data (`ldjax.load_dataset("embedded")`, 6000 uint8
  28x28x1 images), normalised in the step with the training mean/std,
- compiles / warms up (`--warm` steps, excluded: the first epoch's warm-up),
- times `--steps` train steps (SGD, momentum 0.9 PyTorch-style, lr 0.01,
  cross-entropy), each synchronised, and reports the median step's wall time
  and process CPU time (all threads).

s/epoch = median step x (6000 // batch) full batches (ldjax skips the last
incomplete one); img/s = batch / median step. The driver reports, per
variant, the median over rounds, the ratio to PyTorch measured in the same
round (median of the per-round ratios), CPU s per epoch and the 1-minute load
average seen by the workers.

  python experiments/cpu_speed.py                      # the full table (~15-20 min, 2 cores)
  python experiments/cpu_speed.py --rounds 1 --steps 8 --only torch,jax   # a smoke run
  python experiments/cpu_speed.py --check              # im2col convs vs lax.conv
  python experiments/cpu_speed.py --micro              # per-conv fwd / dgrad / wgrad times

Writes experiments/results/cpu_speed/{table.md,table.json,raw.jsonl}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [p for p in (HERE,) if p not in sys.path]

import repo_paths  # noqa: E402

OUT = os.path.join(HERE, "results", "cpu_speed")
N_TRAIN = 6000
WIDTH = 0.25
LR, MOMENTUM = 0.01, 0.9
EXPECTED_PARAMS = 701_178

# ---------------------------------------------------------------- variants
# name -> worker spec. "flags" is XLA_FLAGS; "taskset" pins the worker to CPUs.
XNN_CONV = "--xla_cpu_experimental_xnn_fusion_type=individual_convolution"
YNN_CONV = "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"
VARIANTS = {
    # PyTorch, what a user would pick instead
    "torch": dict(kind="torch"),
    "torch channels_last": dict(kind="torch", channels_last=True),
    "torch 1 thread": dict(kind="torch", threads=1),
    "torch b64": dict(kind="torch", batch=64),
    "torch b256": dict(kind="torch", batch=256),
    # plain JAX/Flax, default XLA:CPU
    "jax": dict(kind="jax"),
    "jax ldjax-stages": dict(kind="jax", model="ldjax"),
    "jax NCHW": dict(kind="jax", layout="nchw"),
    # convolutions as matrix products
    "jax im2col (all convs)": dict(kind="jax", conv="im2col"),
    # ~20x slower than lax.conv: one round of 3 steps only, to keep the run short
    "jax patches+dot (all convs)": dict(kind="jax", conv="patches", max_rounds=1, steps=3, warm=1),
    "jax wgrad-im2col (custom vjp)": dict(kind="jax", conv="wgrad"),
    "jax im2col 3x3 only": dict(kind="jax", conv="im2col3"),
    # XLA:CPU options
    "jax xnnpack off": dict(kind="jax", flags="--xla_cpu_use_xnnpack=false"),
    "jax xnn conv fusion": dict(kind="jax", flags=XNN_CONV),
    "jax ynn conv fusion": dict(kind="jax", flags=YNN_CONV),
    "jax xnn graph greedy": dict(
        kind="jax", flags="--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"),
    "jax onednn": dict(kind="jax", flags="--xla_cpu_use_onednn=true"),
    "jax fast math": dict(kind="jax", flags="--xla_cpu_enable_fast_math=true"),
    "jax eigen 1 thread": dict(kind="jax", flags="--xla_cpu_multi_thread_eigen=false"),
    "jax 1 core (taskset)": dict(kind="jax", taskset="0"),
    # batch sizes
    "jax b64": dict(kind="jax", batch=64),
    "jax b256": dict(kind="jax", batch=256),
}


def spec_of(name: str, args) -> dict:
  spec = {"batch": 128, "steps": args.steps, "warm": args.warm, "threads": os.cpu_count(),
          "layout": "nhwc", "conv": "lax", "model": "flax", "flags": "", "taskset": "",
          "channels_last": False, "max_rounds": 0}
  spec.update(VARIANTS[name])
  return spec


def command_of(spec: dict) -> list[str]:
  # Relative to the repository root, the workers' working directory: their warnings, kept
  # in raw.jsonl, then name the script as a clone has it.
  cmd = [sys.executable, os.path.relpath(os.path.join(HERE, "cpu_speed.py"), ROOT),
         "--worker", json.dumps(spec)]
  if spec["taskset"]:
    cmd = ["taskset", "-c", spec["taskset"]] + cmd
  return cmd


def shell_line(spec: dict) -> str:
  env = f"XLA_FLAGS={shlex.quote(spec['flags'])} " if spec["flags"] else ""
  return env + repo_paths.command(command_of(spec))


# ---------------------------------------------------------------- data


def load_data():
  import numpy as np
  import ldjax
  data = ldjax.load_dataset("embedded")
  mean = np.asarray(data.mean, np.float32)
  std = np.asarray(data.std, np.float32)
  return data.x_train, data.y_train.astype(np.int32), mean, std, data.num_classes


def batches(x, y, batch, count, seed=0):
  import numpy as np
  rng = np.random.default_rng(seed)
  steps = len(x) // batch
  out = []
  while len(out) < count:
    perm = rng.permutation(len(x))
    out += [perm[i * batch:(i + 1) * batch] for i in range(steps)]
  return [(x[i], y[i]) for i in out[:count]]


def timed(step, feed, warm, steps):
  """Runs `warm` untimed then `steps` timed calls of step(batch); per-step wall and CPU s."""
  walls, cpus = [], []
  t0 = time.perf_counter()
  for b in feed[:warm]:
    step(b)
  warm_s = time.perf_counter() - t0
  for b in feed[warm:warm + steps]:
    c, t = time.process_time(), time.perf_counter()
    step(b)
    walls.append(time.perf_counter() - t)
    cpus.append(time.process_time() - c)
  return warm_s, walls, cpus


# ---------------------------------------------------------------- PyTorch


def torch_worker(spec):
  import torch
  from torch import nn
  torch.set_num_threads(spec["threads"])
  torch.manual_seed(0)
  x_all, y_all, mean, std, classes = load_data()

  def c(n):
    return max(1, int(round(n * WIDTH)))

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.proj = None
      if stride != 1 or cin != cout:
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      return torch.relu(y + (x if self.proj is None else self.proj(x)))

  class ResNet18(nn.Module):
    def __init__(self):
      super().__init__()
      self.stem = nn.Sequential(nn.Conv2d(1, c(64), 3, 1, 1, bias=False), nn.BatchNorm2d(c(64)),
                                nn.ReLU())
      blocks, cin = [], c(64)
      for layer, n in enumerate((64, 128, 256, 512)):
        for b in range(2):
          blocks.append(Block(cin, c(n), 2 if layer > 0 and b == 0 else 1))
          cin = c(n)
      self.blocks = nn.Sequential(*blocks)
      self.fc = nn.Linear(cin, classes)

    def forward(self, x):
      return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))

  model = ResNet18()
  n_params = sum(p.numel() for p in model.parameters())
  fmt = torch.channels_last if spec["channels_last"] else torch.contiguous_format
  model = model.to(memory_format=fmt)
  opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
  mean_t = torch.tensor(mean).view(1, -1, 1, 1)
  std_t = torch.tensor(std).view(1, -1, 1, 1)
  model.train()

  def step(b):
    xb, yb = b
    x = torch.from_numpy(xb).permute(0, 3, 1, 2).float().div_(255.0)
    x = ((x - mean_t) / std_t).contiguous(memory_format=fmt)
    loss = nn.functional.cross_entropy(model(x), torch.from_numpy(yb).long())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss)

  feed = batches(x_all, y_all, spec["batch"], spec["warm"] + spec["steps"])
  warm_s, walls, cpus = timed(step, feed, spec["warm"], spec["steps"])
  return dict(params=n_params, warm_s=warm_s, walls=walls, cpus=cpus,
              versions={"torch": torch.__version__})


# ---------------------------------------------------------------- JAX convolutions


def make_conv(impl: str, layout: str):
  """conv(x, w, stride, pad) with w in HWIO; x NHWC (every impl) or NCHW (lax only)."""
  import jax
  import jax.numpy as jnp
  from jax import lax

  def lax_conv(x, w, stride, pad):
    dn = ("NHWC", "HWIO", "NHWC") if layout == "nhwc" else ("NCHW", "HWIO", "NCHW")
    return lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad), (pad, pad)],
                                    dimension_numbers=dn)

  if impl == "lax":
    return lax_conv
  assert layout == "nhwc", "the matrix-product convolutions are written for NHWC"

  def columns(x, kh, kw, stride, pad):
    """[N, Ho, Wo, kh*kw*C], (i, j, c) order = w.reshape(kh*kw*C, O)'s rows."""
    if pad:
      x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    n, h, wd, ch = x.shape
    ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
    cols = [lax.slice(x, (0, i, j, 0), (n, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, ch),
                      (1, stride, stride, 1)) for i in range(kh) for j in range(kw)]
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)

  def im2col(x, w, stride, pad):
    kh, kw, ci, co = w.shape
    p = columns(x, kh, kw, stride, pad)
    return lax.dot_general(p, w.reshape(kh * kw * ci, co), (((3,), (0,)), ((), ())))

  def patches(x, w, stride, pad):
    kh, kw, ci, co = w.shape
    p = lax.conv_general_dilated_patches(x, (kh, kw), (stride, stride), [(pad, pad), (pad, pad)],
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
    # patch features are ordered (c, i, j)
    wm = jnp.transpose(w, (2, 0, 1, 3)).reshape(ci * kh * kw, co)
    return lax.dot_general(p, wm, (((3,), (0,)), ((), ())))

  if impl == "im2col":
    return im2col
  if impl == "im2col3":   # 3x3 convs as matrix products, the 1x1 projections (and stem) via lax
    return lambda x, w, s, p: (im2col(x, w, s, p) if w.shape[0] == 3 and w.shape[2] > 1
                               else lax_conv(x, w, s, p))
  if impl == "patches":
    return patches
  if impl == "wgrad":   # lax.conv forward and input gradient, weight gradient as one matmul
    import functools

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
    def conv(x, w, stride, pad):
      return lax_conv(x, w, stride, pad)

    def fwd(x, w, stride, pad):
      return lax_conv(x, w, stride, pad), (x, w)

    def bwd(stride, pad, res, g):
      x, w = res
      _, vjp_x = jax.vjp(lambda x_: lax_conv(x_, w, stride, pad), x)
      (dx,) = vjp_x(g)
      kh, kw, ci, co = w.shape
      p = columns(x, kh, kw, stride, pad)
      dw = lax.dot_general(p.reshape(-1, kh * kw * ci), g.reshape(-1, co),
                           (((0,), (0,)), ((), ()))).reshape(w.shape)
      return dx, dw

    conv.defvjp(fwd, bwd)
    return conv
  raise ValueError(impl)


def flax_model(classes: int, conv_impl: str, layout: str):
  """The small-image ResNet-18 of ldjax.models (layers.py / zoo.py), with a pluggable conv."""
  import flax.linen as nn
  import jax.numpy as jnp
  conv_fn = make_conv(conv_impl, layout)
  conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
  axis = -1 if layout == "nhwc" else 1

  def c(n):
    return max(1, int(round(n * WIDTH)))

  class Conv(nn.Module):
    features: int
    kernel: int
    stride: int = 1

    @nn.compact
    def __call__(self, x):
      w = self.param("kernel", conv_init, (self.kernel, self.kernel, x.shape[axis], self.features))
      return conv_fn(x, w, self.stride, self.kernel // 2)

  def bn(train):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, axis=axis)

  class Block(nn.Module):
    features: int
    stride: int

    @nn.compact
    def __call__(self, x, train):
      y = nn.relu(bn(train)(Conv(self.features, 3, self.stride)(x)))
      y = bn(train)(Conv(self.features, 3)(y))
      if x.shape[axis] != self.features or self.stride != 1:
        x = bn(train)(Conv(self.features, 1, self.stride)(x))
      return nn.relu(y + x)

  class ResNet18(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      x = nn.relu(bn(train)(Conv(c(64), 3)(x)))
      for layer, n in enumerate((64, 128, 256, 512)):
        for b in range(2):
          x = Block(c(n), 2 if layer > 0 and b == 0 else 1)(x, train)
      return nn.Dense(classes)(jnp.mean(x, axis=(1, 2) if layout == "nhwc" else (2, 3)))

  return ResNet18()


def jax_worker(spec):
  import jax
  import jax.numpy as jnp
  import optax
  x_all, y_all, mean, std, classes = load_data()
  batch, layout = spec["batch"], spec["layout"]
  tx = optax.chain(optax.trace(decay=MOMENTUM), optax.scale(-LR))   # ldjax's "sgd"

  if spec["model"] == "ldjax":
    import ldjax
    from ldjax.models.staged import apply_stages, count_params
    m = ldjax.build_model("resnet18", (28, 28, 1), classes, width=WIDTH)
    variables = m.init(jax.random.key(0), (28, 28, 1))
    n_params = count_params(variables)
    params = [v.get("params", {}) for v in variables]
    stats = [v.get("batch_stats", {}) for v in variables]

    def forward(params, stats, x):
      vs = [{**({"params": p} if p else {}), **({"batch_stats": s} if s else {})}
            for p, s in zip(params, stats)]
      logits, new = apply_stages(m.stages, vs, x, train=True)
      return logits, [v.get("batch_stats", {}) for v in new]
  else:
    model = flax_model(classes, spec["conv"], layout)
    shape = (1, 28, 28, 1) if layout == "nhwc" else (1, 1, 28, 28)
    v = model.init(jax.random.key(0), jnp.zeros(shape), train=False)
    params, stats = v["params"], v["batch_stats"]
    n_params = sum(int(a.size) for a in jax.tree.leaves(params))

    def forward(params, stats, x):
      logits, upd = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                mutable=["batch_stats"])
      return logits, upd["batch_stats"]

  opt_state = tx.init(params)
  mean_j, std_j = jnp.asarray(mean), jnp.asarray(std)

  def train_step(params, stats, opt_state, xb, yb):
    x = (xb.astype(jnp.float32) / 255.0 - mean_j) / std_j
    if layout == "nchw":
      x = jnp.transpose(x, (0, 3, 1, 2))

    def loss_fn(p):
      logits, new_stats = forward(p, stats, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), new_stats

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  t0 = time.perf_counter()
  compiled = jax.jit(train_step, donate_argnums=(0, 1, 2)).lower(
      params, stats, opt_state, jnp.zeros((batch, 28, 28, 1), jnp.uint8),
      jnp.zeros((batch,), jnp.int32)).compile()
  compile_s = time.perf_counter() - t0
  state = [params, stats, opt_state]

  def step(b):
    p, s, o, loss = compiled(*state, jnp.asarray(b[0]), jnp.asarray(b[1]))
    state[:] = [p, s, o]
    return float(loss)   # synchronises, like reading the metrics of a step

  feed = batches(x_all, y_all, batch, spec["warm"] + spec["steps"])
  warm_s, walls, cpus = timed(step, feed, spec["warm"], spec["steps"])
  return dict(params=n_params, warm_s=warm_s, compile_s=compile_s, walls=walls, cpus=cpus,
              versions={"jax": jax.__version__}, xla_flags=os.environ.get("XLA_FLAGS", ""))


# ---------------------------------------------------------------- checks and micro benchmark

CONV_SHAPES = [  # (H=W of the input, Cin, Cout, kernel, stride) of the width-0.25 ResNet-18
    (28, 1, 16, 3, 1), (28, 16, 16, 3, 1), (28, 16, 32, 3, 2), (14, 32, 32, 3, 1),
    (28, 16, 32, 1, 2), (14, 32, 64, 3, 2), (7, 64, 64, 3, 1), (7, 64, 128, 3, 2),
    (4, 128, 128, 3, 1)]


def check_convs():
  import jax
  import jax.numpy as jnp
  ref = make_conv("lax", "nhwc")
  rows = []
  for (h, ci, co, k, s) in CONV_SHAPES:
    kx, kw_, kg = jax.random.split(jax.random.key(h * 1000 + ci * 10 + k), 3)
    x = jax.random.normal(kx, (8, h, h, ci))
    w = jax.random.normal(kw_, (k, k, ci, co)) * (2.0 / (k * k * co)) ** 0.5
    out_r, vjp_r = jax.vjp(lambda x_, w_: ref(x_, w_, s, k // 2), x, w)
    g = jax.random.normal(kg, out_r.shape)
    dx_r, dw_r = vjp_r(g)
    for impl in ("im2col", "patches", "wgrad"):
      f = make_conv(impl, "nhwc")
      out, vjp = jax.vjp(lambda x_, w_: f(x_, w_, s, k // 2), x, w)
      dx, dw = vjp(g)
      rel = lambda a, b: float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-12))
      rows.append(dict(shape=[h, ci, co, k, s], impl=impl, out=rel(out, out_r),
                       dx=rel(dx, dx_r), dw=rel(dw, dw_r)))
  worst = max(max(r["out"], r["dx"], r["dw"]) for r in rows)
  return dict(rows=rows, worst_rel_err=worst, ok=bool(worst < 1e-5))


def micro(batch=128, reps=7):
  """Median ms of the forward, input-gradient and weight-gradient of each conv, lax vs im2col."""
  import jax
  import jax.numpy as jnp
  rows = []
  for (h, ci, co, k, s) in CONV_SHAPES:
    x = jax.random.normal(jax.random.key(0), (batch, h, h, ci))
    w = jax.random.normal(jax.random.key(1), (k, k, ci, co))
    for impl in ("lax", "im2col"):
      f = make_conv(impl, "nhwc")
      fwd = jax.jit(lambda x_, w_: f(x_, w_, s, k // 2))
      g = jnp.ones(fwd(x, w).shape)
      dgrad = jax.jit(lambda x_, w_: jax.vjp(lambda a: f(a, w_, s, k // 2), x_)[1](g)[0])
      wgrad = jax.jit(lambda x_, w_: jax.vjp(lambda b: f(x_, b, s, k // 2), w_)[1](g)[0])
      row = dict(shape=[h, ci, co, k, s], impl=impl)
      for name, fn in (("fwd", fwd), ("dgrad", dgrad), ("wgrad", wgrad)):
        fn(x, w).block_until_ready()
        ts = []
        for _ in range(reps):
          t = time.perf_counter()
          fn(x, w).block_until_ready()
          ts.append(time.perf_counter() - t)
        row[name + "_ms"] = 1e3 * statistics.median(ts)
      rows.append(row)
  try:
    import torch
    torch.set_num_threads(os.cpu_count())
    for (h, ci, co, k, s) in CONV_SHAPES:
      x = torch.randn(batch, ci, h, h, requires_grad=True)
      conv = torch.nn.Conv2d(ci, co, k, s, k // 2, bias=False)
      row = dict(shape=[h, ci, co, k, s], impl="torch")
      out = conv(x)
      g = torch.ones_like(out)
      for name in ("fwd", "dgrad", "wgrad"):
        ts = []
        for _ in range(reps + 1):
          t = time.perf_counter()
          if name == "fwd":
            with torch.no_grad():
              conv(x)
          else:
            out = conv(x)
            inputs = (x,) if name == "dgrad" else (conv.weight,)
            torch.autograd.grad(out, inputs, g)
          ts.append(time.perf_counter() - t)
        row[name + "_ms"] = 1e3 * statistics.median(ts[1:])
      # dgrad / wgrad above include a forward; subtract it
      row["dgrad_ms"] -= row["fwd_ms"]
      row["wgrad_ms"] -= row["fwd_ms"]
      rows.append(row)
  except ImportError:
    pass
  return rows


# ---------------------------------------------------------------- driver


def run_worker(spec):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  if spec["flags"]:
    env["XLA_FLAGS"] = spec["flags"]
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.setdefault("JAX_PLATFORMS", "cpu")
  load = os.getloadavg()[0]
  r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
  t0 = time.perf_counter()
  proc = subprocess.run(command_of(spec), env=env, capture_output=True, text=True, cwd=ROOT)
  wall = time.perf_counter() - t0
  r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
  child_cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
  line = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not line:
    return dict(error=(proc.stderr or proc.stdout)[-2000:], rc=proc.returncode, load1=load,
                process_wall_s=wall, process_cpu_s=child_cpu)
  res = json.loads(line[-1])
  res.update(load1=load, load1_after=os.getloadavg()[0], process_wall_s=wall,
             process_cpu_s=child_cpu,
             warnings=[l for l in proc.stderr.splitlines() if "W" in l[:2] or "warn" in l.lower()][:5])
  return res


def summarise(names, specs, results):
  rows = []
  torch_by_round = {r["round"]: statistics.median(r["walls"]) for r in results
                    if r["name"] == "torch" and "walls" in r}
  for name in names:
    rs = [r for r in results if r["name"] == name and "walls" in r]
    spec = specs[name]
    if not rs:
      err = next((r.get("error", "") for r in results if r["name"] == name), "")
      rows.append(dict(variant=name, error=err.strip().splitlines()[-1] if err.strip() else "failed",
                       command=shell_line(spec)))
      continue
    b = spec["batch"]
    spe = N_TRAIN // b
    step = statistics.median(statistics.median(r["walls"]) for r in rs)
    cpu = statistics.median(statistics.median(r["cpus"]) for r in rs)
    # ratio to PyTorch (batch 128) per image, in the same round
    ratios = [(statistics.median(r["walls"]) / b) / (torch_by_round[r["round"]] / 128)
              for r in rs if r["round"] in torch_by_round]
    ratio_t = statistics.median(ratios) if ratios else None
    rows.append(dict(
        variant=name, batch=b, s_per_epoch=step * spe, images_per_s=b / step,
        ratio_to_torch=ratio_t, ratio_range=[min(ratios), max(ratios)] if ratios else None,
        cpu_s_per_epoch=cpu * spe, cpu_per_wall=cpu / step,
        load1=statistics.median(r["load1"] for r in rs), rounds=len(rs),
        step_ms_per_round=[round(1e3 * statistics.median(r["walls"]), 1) for r in rs],
        compile_s=statistics.median(r["compile_s"] for r in rs) if "compile_s" in rs[0] else None,
        params=rs[0]["params"], command=shell_line(spec)))
  jax_base = next((r for r in rows if r["variant"] == "jax" and "s_per_epoch" in r), None)
  for r in rows:
    if jax_base and "s_per_epoch" in r and r["variant"].startswith("jax"):
      r["speedup_vs_jax"] = (jax_base["s_per_epoch"] / (N_TRAIN // 128)) / (
          r["s_per_epoch"] / (N_TRAIN // r["batch"])) * (r["batch"] / 128)
  return rows


def markdown(rows, meta):
  out = [f"# CPU speed: ResNet-18 width {WIDTH} ({EXPECTED_PARAMS:,} params), embedded data",
         "", meta["note"], "",
         "| variant | batch | s/epoch (median) | img/s | ratio to PyTorch (per image) | "
         "vs jax baseline | CPU s/epoch | CPU/wall | load avg (1 min) | per-round step ms |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
  for r in rows:
    if "error" in r:
      out.append(f"| {r['variant']} | | failed: {r['error'][:120]} | | | | | | | |")
      continue
    ratio = (f"{r['ratio_to_torch']:.2f} ({r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f})"
             if r["ratio_to_torch"] else "")
    sp = f"{r['speedup_vs_jax']:.2f}x" if "speedup_vs_jax" in r else ""
    out.append(f"| {r['variant']} | {r['batch']} | {r['s_per_epoch']:.2f} | "
               f"{r['images_per_s']:.0f} | {ratio} | {sp} | {r['cpu_s_per_epoch']:.2f} | "
               f"{r['cpu_per_wall']:.2f} | {r['load1']:.2f} | "
               f"{', '.join(str(x) for x in r['step_ms_per_round'])} |")
  out += ["", "Commands (one worker; the driver runs each once per round):", ""]
  out += [f"- {r['variant']}: `{r['command']}`" for r in rows]
  return "\n".join(out) + "\n"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--worker", help=argparse.SUPPRESS)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=15, help="timed steps per worker")
  p.add_argument("--warm", type=int, default=3, help="untimed steps after compilation")
  p.add_argument("--only", default="", help="comma list of variant names (default: all)")
  p.add_argument("--out", default=OUT)
  p.add_argument("--check", action="store_true", help="im2col / patches / wgrad vs lax.conv")
  p.add_argument("--micro", action="store_true", help="per-conv fwd / dgrad / wgrad timings")
  args = p.parse_args(argv)

  if args.worker:
    spec = json.loads(args.worker)
    res = torch_worker(spec) if spec["kind"] == "torch" else jax_worker(spec)
    print(json.dumps(res))
    return
  os.makedirs(args.out, exist_ok=True)
  if args.check:
    res = check_convs()
    with open(os.path.join(args.out, "conv_check.json"), "w") as f:
      json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))
    return
  if args.micro:
    rows = micro()
    with open(os.path.join(args.out, "micro.json"), "w") as f:
      json.dump(dict(rows=rows, load1=os.getloadavg()[0]), f, indent=1)
    for r in rows:
      print(r)
    return

  names = [n.strip() for n in args.only.split(",") if n.strip()] or list(VARIANTS)
  if "torch" not in names:
    names.insert(0, "torch")
  specs = {n: spec_of(n, args) for n in names}
  results = []
  raw_path = os.path.join(args.out, "raw.jsonl")
  t_start = time.time()
  with open(raw_path, "a") as raw:
    for rnd in range(args.rounds):
      k = rnd * max(1, len(names) // args.rounds)
      order = names[k:] + names[:k]   # rotated, so no variant always runs first or last
      for name in order:
        if specs[name]["max_rounds"] and rnd >= specs[name]["max_rounds"]:
          continue
        res = run_worker(specs[name])
        res.update(name=name, round=rnd, spec=specs[name], time=time.time())
        results.append(res)
        raw.write(json.dumps(res) + "\n")
        raw.flush()
        msg = (f"{1e3 * statistics.median(res['walls']):.1f} ms/step" if "walls" in res
               else "FAILED " + res.get("error", "")[-300:])
        print(f"[round {rnd} {time.time() - t_start:6.0f}s load {res['load1']:.2f}] {name}: {msg}",
              flush=True)
  rows = summarise(names, specs, results)
  meta = dict(
      note=(f"{args.rounds} rounds, variants interleaved (rotated order), each a fresh process; "
            f"per worker: compile + {args.warm} warm-up steps excluded, then {args.steps} timed "
            f"synchronised train steps (a subset of the {N_TRAIN // 128} steps of an epoch at "
            f"batch 128); s/epoch = median step x {N_TRAIN} // batch. Ratio to PyTorch: per image, "
            f"against the PyTorch batch-128 worker of the same round (median, min-max over "
            f"rounds). CPU s = process CPU time (all threads) of the timed steps. "
            f"{os.cpu_count()} CPUs; total wall {time.time() - t_start:.0f} s."),
      cpus=os.cpu_count(), rounds=args.rounds, steps=args.steps, warm=args.warm,
      driver=repo_paths.command(["python", "experiments/cpu_speed.py",
                                 *(sys.argv[1:] if argv is None else argv)]))
  with open(os.path.join(args.out, "table.json"), "w") as f:
    json.dump(dict(meta=meta, rows=rows), f, indent=1)
  md = markdown(rows, meta)
  with open(os.path.join(args.out, "table.md"), "w") as f:
    f.write(md)
  print(md)


if __name__ == "__main__":
  main()
