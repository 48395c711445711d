"""A plain Flax (linen) + optax reference, written from scratch without ldjax.

It trains a CIFAR-style ResNet-18 (or a plain VGG-11-BN) on MNIST-format IDX
files with the recipe of `python -m ldjax.run --recipe strong`, so that
ldjax's SGD baseline can be checked against an independent implementation:

- Nesterov SGD, momentum 0.9, lr 0.05; weight decay 5e-4 on kernels only
  (arrays with ndim > 1) added to the gradient before the momentum
  (optax.add_decayed_weights, then optax.sgd);
- cosine decay to 0 over all steps, times a linear warm-up
  min(1, (step + 1) / steps_per_epoch) over the first epoch;
- label smoothing 0.1; the last incomplete batch of each epoch is skipped.

Data are picked exactly as ldjax's --train-size / --test-size do: the kept
indices are np.sort(default_rng(0).permutation(n)[:size]); images are
normalised with the training subset's mean and std. The epoch order is
default_rng(SeedSequence([seed, epoch])).permutation(n), epoch counted from 0,
like ldjax's; augmentation pads with zero pixels (before normalisation) and
crops back, and flips left-right with probability 1/2.

The models use Flax's default initialisers (lecun_normal kernels, zero
biases, BatchNorm scale 1 and offset 0; momentum 0.9, eps 1e-5), i.e. what a
plain Flax model written from scratch gets.

  python experiments/reference_flax.py --data /usr/share/datasets/fashion-mnist \
      --train-size 8000 --test-size 2000 --epochs 12 --width 0.25 --out ref.json
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import repo_paths  # noqa: E402

# ---------------------------------------------------------------- data


def read_idx(path: str) -> np.ndarray:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  ndim = data[3]
  dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(directory: str, base: str) -> str:
  for name in (base, base + ".gz"):
    if os.path.isfile(os.path.join(directory, name)):
      return os.path.join(directory, name)
  raise SystemExit(f"missing {base}(.gz) in {directory}")


def subset(x, y, size, seed=0):
  if size is None or size == len(x):
    return x, y
  keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:size])
  return x[keep], y[keep]


def load(directory: str, train_size, test_size):
  x_tr = read_idx(find(directory, "train-images-idx3-ubyte"))[..., None]
  y_tr = read_idx(find(directory, "train-labels-idx1-ubyte")).astype(np.int32)
  x_te = read_idx(find(directory, "t10k-images-idx3-ubyte"))[..., None]
  y_te = read_idx(find(directory, "t10k-labels-idx1-ubyte")).astype(np.int32)
  classes = int(max(y_tr.max(), y_te.max())) + 1
  x_tr, y_tr = subset(x_tr, y_tr, train_size)
  x_te, y_te = subset(x_te, y_te, test_size)
  pix = x_tr.reshape(-1, x_tr.shape[-1]).astype(np.float64) / 255.0
  mean, std = pix.mean(0), pix.std(0)
  return x_tr, y_tr, x_te, y_te, classes, mean.astype(np.float32), std.astype(np.float32)


def augment(x: np.ndarray, rng: np.random.Generator, flip: bool, pad: int) -> np.ndarray:
  """Zero-pad by `pad`, random crop back; random horizontal flip (uint8 images)."""
  n, h, w, _ = x.shape
  flips = rng.random(n) < 0.5 if flip else np.zeros(n, bool)
  if flip:
    x = np.where(flips[:, None, None, None], x[:, :, ::-1], x)
  if pad:
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
    rows = dy[:, None] + np.arange(h)
    cols = dx[:, None] + np.arange(w)
    x = xp[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  return x


# ---------------------------------------------------------------- models

BN = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)


class Block(nn.Module):
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train):
    norm = functools.partial(BN, use_running_average=not train)
    y = nn.Conv(self.features, (3, 3), self.strides, padding=1, use_bias=False)(x)
    y = nn.relu(norm()(y))
    y = nn.Conv(self.features, (3, 3), padding=1, use_bias=False)(y)
    y = norm()(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), self.strides, use_bias=False)(x)
      x = norm()(x)
    return nn.relu(x + y)


class ResNet18(nn.Module):
  num_classes: int
  width: float = 1.0

  @nn.compact
  def __call__(self, x, train):
    c = lambda n: max(1, int(round(n * self.width)))
    x = nn.Conv(c(64), (3, 3), padding=1, use_bias=False)(x)
    x = nn.relu(BN(use_running_average=not train)(x))
    for i, n in enumerate((64, 128, 256, 512)):
      for b in range(2):
        x = Block(c(n), 2 if i > 0 and b == 0 else 1)(x, train)
    return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


class VGG11(nn.Module):
  """VGG-11-BN for small images: ceil-mode pools (28 -> 1), classifier 512, 512, K."""
  num_classes: int
  width: float = 1.0

  @nn.compact
  def __call__(self, x, train):
    c = lambda n: max(1, int(round(n * self.width)))
    for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
      if v == "M":
        x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")
      else:
        x = nn.Conv(c(v), (3, 3), padding=1)(x)
        x = nn.relu(BN(use_running_average=not train)(x))
    x = x.reshape((x.shape[0], -1))
    for _ in range(2):
      x = nn.relu(nn.Dense(c(512))(x))
      x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


# ---------------------------------------------------------------- training


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
  p.add_argument("--train-size", type=int, default=8000)
  p.add_argument("--test-size", type=int, default=2000)
  p.add_argument("--model", choices=("resnet18", "vgg11"), default="resnet18")
  p.add_argument("--width", type=float, default=0.25)
  p.add_argument("--epochs", type=int, default=12)
  p.add_argument("--batch-size", type=int, default=256)
  p.add_argument("--lr", type=float, default=0.05)
  p.add_argument("--momentum", type=float, default=0.9)
  p.add_argument("--weight-decay", type=float, default=5e-4)
  p.add_argument("--label-smoothing", type=float, default=0.1)
  p.add_argument("--warmup-lr-epochs", type=float, default=1.0)
  p.add_argument("--augment", choices=("none", "flip", "crop", "flip,crop"), default="none")
  p.add_argument("--crop-pad", type=int, default=2)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--eval-batch-size", type=int, default=1000)
  p.add_argument("--out", default=None, help="JSON file for the results")
  args = p.parse_args(argv)

  x_tr, y_tr, x_te, y_te, classes, mean, std = load(args.data, args.train_size, args.test_size)
  n = len(x_tr)
  steps_per_epoch = n // args.batch_size
  total = args.epochs * steps_per_epoch
  warm = args.warmup_lr_epochs * steps_per_epoch
  cosine = optax.cosine_decay_schedule(args.lr, decay_steps=total)
  schedule = (lambda s: cosine(s) * jnp.minimum(1.0, (s + 1) / warm)) if warm else cosine
  kernels = lambda params: jax.tree.map(lambda a: a.ndim > 1, params)
  tx = optax.chain(optax.add_decayed_weights(args.weight_decay, mask=kernels),
                   optax.sgd(schedule, momentum=args.momentum, nesterov=True))

  model = (ResNet18 if args.model == "resnet18" else VGG11)(classes, args.width)
  key = jax.random.PRNGKey(args.seed)
  variables = model.init({"params": key}, jnp.zeros((1, *x_tr.shape[1:]), jnp.float32),
                         train=False)
  params, stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  n_params = sum(a.size for a in jax.tree.leaves(params))

  def prep(x):
    return (x.astype(jnp.float32) / 255.0 - mean) / std

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def train_step(params, stats, opt_state, x, y, rng):
    def loss_fn(p):
      logits, upd = model.apply({"params": p, "batch_stats": stats}, prep(x), train=True,
                                mutable=["batch_stats"], rngs={"dropout": rng})
      targets = optax.smooth_labels(jax.nn.one_hot(y, classes), args.label_smoothing)
      return optax.softmax_cross_entropy(logits, targets).mean(), (logits, upd)
    (loss, (logits, upd)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    correct = jnp.sum(jnp.argmax(logits, -1) == y)
    return params, upd["batch_stats"], opt_state, loss, correct

  @jax.jit
  def eval_step(params, stats, x, y):
    logits = model.apply({"params": params, "batch_stats": stats}, prep(x), train=False)
    return jnp.sum(jnp.argmax(logits, -1) == y)

  def evaluate(params, stats):
    correct = 0
    for s in range(0, len(x_te), args.eval_batch_size):
      correct += int(eval_step(params, stats, x_te[s:s + args.eval_batch_size],
                               y_te[s:s + args.eval_batch_size]))
    return 100.0 * correct / len(x_te)

  flip, pad = "flip" in args.augment, args.crop_pad if "crop" in args.augment else 0
  print(f"reference {args.model} width {args.width}: {n} train / {len(x_te)} test, "
        f"{n_params} params, {args.epochs} epochs x {steps_per_epoch} steps, "
        f"batch {args.batch_size}, augment {args.augment}", flush=True)
  records, train_time = [], 0.0
  for epoch in range(args.epochs):
    rng = np.random.default_rng(np.random.SeedSequence([args.seed, epoch]))
    perm = rng.permutation(n)
    aug_rng = np.random.default_rng(np.random.SeedSequence([args.seed, epoch, 1]))
    start = time.perf_counter()
    loss_sum, correct = 0.0, 0
    for s in range(steps_per_epoch):
      idx = perm[s * args.batch_size:(s + 1) * args.batch_size]
      xb = x_tr[idx]
      if flip or pad:
        xb = augment(xb, aug_rng, flip, pad)
      step_key = jax.random.fold_in(jax.random.fold_in(key, epoch + 1), s)
      params, stats, opt_state, loss, c = train_step(params, stats, opt_state, xb, y_tr[idx],
                                                     step_key)
      loss_sum += float(loss)
      correct += int(c)
    epoch_time = time.perf_counter() - start
    train_time += epoch_time
    acc = evaluate(params, stats)
    rec = {"epoch": epoch + 1, "train_loss": loss_sum / steps_per_epoch,
           "train_accuracy": 100.0 * correct / (steps_per_epoch * args.batch_size),
           "test_accuracy": acc, "epoch_time_s": epoch_time}
    records.append(rec)
    print(f"epoch {epoch + 1:3d}  loss {rec['train_loss']:.4f}  train {rec['train_accuracy']:6.2f}%"
          f"  test {acc:6.2f}%  {epoch_time:6.1f}s", flush=True)
  result = {"config": repo_paths.tree(vars(args)), "params": int(n_params), "steps_per_epoch": steps_per_epoch,
            "test_accuracy": records[-1]["test_accuracy"],
            "best_test_accuracy": max(r["test_accuracy"] for r in records),
            "train_time_s": train_time, "epochs": records}
  print(f"final test accuracy {result['test_accuracy']:.2f}%  train time {train_time:.1f}s")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
