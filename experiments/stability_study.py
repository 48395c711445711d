"""Decisions that do not flip on rounding (issue #28, item 3).

How often does the paper's decision rule (Eq. 4 and the median rule on one
epoch's scores) change its decision under perturbations that should not
matter, and does the "stable" rule (`ldjax.train.scoring.decide_stable`) do
better? Three phases, each resumable (a finished run is not run again):

  record    SGD runs of N small configurations, each three times: the base
            (1 device), 4 devices, and 1e-7 relative Gaussian noise on the
            initial weights. Every epoch's head scores P are kept. Before the
            first drop Freeze and Drop train exactly like SGD, so a rule applied
            offline to the P streams gives each run's first decision.
  analyze   candidate rules applied offline to the (base, perturbed) pairs:
            first-decision flip rates, per-epoch flip rates, drop rates.
  validate  real Drop runs, rule paper and stable, on 1 vs 4 devices and on
            float32 vs bfloat16 stores: the whole sequence of drop events
            compared (and the stable rule's cost refusals counted apart).

  XLA_FLAGS is set by the script (4 host devices) before jax is imported.
  python experiments/stability_study.py record|analyze|validate|report|all

Results: experiments/results/stability/{streams,validate_RULE}.json, analysis.json,
README.md (the tables, the command, commit, load average and seeds).
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4").strip()

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ldjax.train import scoring  # noqa: E402  (numpy only; jax is imported lazily)

OUT = ROOT / "experiments" / "results" / "stability"
NOISE = 1e-7   # relative: about one float32 ulp (2^-23 = 1.19e-7)
FASHION = "idx:/usr/share/datasets/fashion-mnist"

# 20 small configurations: model, width, data, seed, lr, batch, optimizer/recipe.
# Warm-up 2 and 6 epochs: decisions at the ends of epochs 3, 4 and 5 (1-based).
_BASE = dict(epochs=6, warmup=2, train_size=1024, test_size=256)
CONFIGS = [dict(_BASE, name=f"c{i:02d}", **c) for i, c in enumerate([
    dict(model="vgg11", width=1 / 16, data="embedded", seed=0, lr=0.01, batch_size=128),
    dict(model="vgg11", width=1 / 16, data="embedded", seed=1, lr=0.01, batch_size=128),
    dict(model="vgg11", width=1 / 16, data="embedded", seed=2, lr=0.03, batch_size=64),
    dict(model="vgg11", width=1 / 16, data="embedded", seed=3, lr=0.003, batch_size=128),
    dict(model="vgg11", width=1 / 8, data="embedded", seed=0, lr=0.01, batch_size=128),
    dict(model="vgg11", width=1 / 8, data="embedded", seed=1, lr=0.05, batch_size=128,
         recipe="strong"),
    dict(model="vgg11", width=1 / 16, data=FASHION, seed=0, lr=0.01, batch_size=128),
    dict(model="vgg11", width=1 / 16, data=FASHION, seed=1, lr=0.05, batch_size=128,
         recipe="strong"),
    dict(model="vgg11", width=1 / 16, data=FASHION, seed=2, lr=0.001, batch_size=64,
         optimizer="adamw"),
    dict(model="vgg11", width=1 / 16, data="embedded", seed=4, lr=0.001, batch_size=128,
         optimizer="adamw"),
    dict(model="vgg16", width=1 / 16, data="embedded", seed=0, lr=0.01, batch_size=128),
    dict(model="vgg16", width=1 / 16, data=FASHION, seed=1, lr=0.05, batch_size=128,
         recipe="strong"),
    dict(model="vgg16", width=1 / 16, data="embedded", seed=2, lr=0.003, batch_size=64),
    dict(model="resnet18", width=1 / 16, data="embedded", seed=0, lr=0.01, batch_size=128),
    dict(model="resnet18", width=1 / 16, data="embedded", seed=1, lr=0.05, batch_size=128,
         recipe="strong"),
    dict(model="resnet18", width=1 / 16, data=FASHION, seed=2, lr=0.01, batch_size=128),
    dict(model="resnet18", width=1 / 16, data=FASHION, seed=3, lr=0.001, batch_size=128,
         optimizer="adamw"),
    dict(model="resnet18", width=1 / 16, data="embedded", seed=4, lr=0.03, batch_size=64),
    dict(model="vgg11", width=1 / 16, data=FASHION, seed=5, lr=0.02, batch_size=128,
         optimizer="nesterov"),
    dict(model="vgg16", width=1 / 16, data="embedded", seed=5, lr=0.02, batch_size=128,
         optimizer="nesterov"),
])]

# -- the candidate rules, applied offline ---------------------------------------------------
# Each maps (P this epoch, P last epoch or None) -> cut n (0: no drop). The first
# decision has no previously dropped stage (M_d undefined), so the median rule
# always passes and a rule's first decision is its cut.


def _paper(p, prev):
  return scoring.find_cut(scoring.standardize(p))


def _avg(p, prev):
  return None if prev is None else (np.asarray(p) + np.asarray(prev)) / 2


def _two_sided(m, averaged=True):
  """The first draft: sign change whose both sides clear +-m (on the 2-epoch mean)."""
  def rule(p, prev):
    q = _avg(p, prev) if averaged else np.asarray(p)
    if q is None:
      return 0
    s = scoring.standardize(q)
    n = scoring.find_cut(s)
    return n if n and s[n - 1] >= m and s[n] <= -m else 0
  return rule


def _lead_above(m, averaged=False):
  """Candidates: the leading stages whose P' >= m (no sign change asked for)."""
  def rule(p, prev):
    q = _avg(p, prev) if averaged else np.asarray(p)
    if q is None:
      return 0
    s = scoring.standardize(q)
    n = 0
    while n < len(s) - 1 and s[n] >= m:
      n += 1
    return n
  return rule


def _confirmed(base):
  """`base`'s cut on this epoch's P, taken only when last epoch's P gives the same."""
  def rule(p, prev):
    if prev is None:
      return 0
    n = base(p, None)
    return n if n and base(prev, None) == n else 0
  return rule


def _min_two(base):
  """The smaller of `base`'s cuts on this and last epoch's P (0 without last epoch)."""
  def rule(p, prev):
    if prev is None:
      return 0
    return min(base(p, None), base(prev, None))
  return rule


def _current(p, prev):
  """The library's `decide_stable` (first decision: nothing dropped yet)."""
  d = scoring.decide_stable(p, prev, ())
  return d.n_star if d.drop else 0


CANDIDATES = {
    "paper": _paper,
    "draft: avg2 + two-sided 0.5": _two_sided(0.5),
    "avg2 + two-sided 0.25": _two_sided(0.25),
    "avg2 (paper on the 2-epoch mean)": _two_sided(0.0),
    "lead P'>=0.5": _lead_above(0.5),
    "lead P'>=1.0": _lead_above(1.0),
    "avg2 + lead P'>=0.5": _lead_above(0.5, True),
    "avg2 + lead P'>=0.75": _lead_above(0.75, True),
    "avg2 + lead P'>=1.0": _lead_above(1.0, True),
    "avg2 + lead P'>=1.25": _lead_above(1.25, True),
    "avg2 + lead P'>=1.5": _lead_above(1.5, True),
    "paper confirmed on 2 epochs": _confirmed(_paper),
    "min of 2 epochs' paper cut": _min_two(_paper),
    "lead P'>=0.5 confirmed": _confirmed(_lead_above(0.5)),
    "lead P'>=1.0 confirmed": _confirmed(_lead_above(1.0)),
    "min of 2 epochs' lead P'>=0.5": _min_two(_lead_above(0.5)),
    "min of 2 epochs' lead P'>=1.0": _min_two(_lead_above(1.0)),
    "decide_stable (library)": _current,
}


def first_decision(rule, stream, warmup, epochs):
  """(1-based epoch after which it drops, cut) of `rule` on one run's P stream, or None.

  Decisions are taken at the ends of 0-based epochs warmup .. epochs - 2 (none
  after the last), as `ldjax.train.decisions.score_and_decide` does."""
  for e in range(warmup, epochs - 1):
    n = rule(stream[e], stream[e - 1] if e > 0 else None)
    if n:
      return (e + 1, n)
  return None


def epoch_decisions(rule, stream, warmup, epochs):
  """The cut (0: none) a rule would take at each decision epoch if nothing dropped before."""
  return [rule(stream[e], stream[e - 1] if e > 0 else None) for e in range(warmup, epochs - 1)]


# -- running ----------------------------------------------------------------------------------

def _load(path: Path) -> dict:
  return json.loads(path.read_text()) if path.exists() else {}


def _save(path: Path, obj) -> None:
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(obj, indent=1))
  tmp.replace(path)


_DATA = {}


def _setup(c: dict, **over):
  import jax
  import ldjax
  from ldjax.runs.config import recipe
  key = (c["data"], c["train_size"], c["test_size"])
  if key not in _DATA:
    _DATA[key] = ldjax.load_dataset(c["data"], train_size=c["train_size"],
                                    test_size=c["test_size"])
  data = _DATA[key]
  settings = recipe(c.get("recipe", "paper"))
  settings |= dict(model=c["model"], width=c["width"], epochs=c["epochs"], warmup=c["warmup"],
                   lr=c["lr"], batch_size=c["batch_size"], seed=c["seed"],
                   eval_batch_size=256, eval_every=c["epochs"], augment="none",
                   feature_dtype="float32")   # the recorded runs' (the strong recipe's is bf16 since)
  if "optimizer" in c:
    settings["optimizer"] = c["optimizer"]
  cfg = ldjax.TrainConfig(**(settings | over))
  model = ldjax.build_model(c["model"], data.image_shape, data.num_classes, width=c["width"])
  variables = model.init(jax.random.key(c["seed"]), data.image_shape)
  return ldjax, jax, data, cfg, model, variables


def _noisy(jax, variables, seed: int):
  """`variables` with params * (1 + NOISE * N(0, 1)), one key per leaf."""
  import jax.numpy as jnp
  out = []
  key = jax.random.key(10_000 + seed)
  for v in variables:
    leaves, tree = jax.tree.flatten(v.get("params", {}))
    noisy = []
    for leaf in leaves:
      key, sub = jax.random.split(key)
      noisy.append(leaf * (1 + NOISE * jax.random.normal(sub, leaf.shape, jnp.float32))
                   .astype(leaf.dtype))
    out.append(dict(v) | ({"params": jax.tree.unflatten(tree, noisy)} if leaves else {}))
  return out


def record(configs, noise_configs: int | None = None) -> None:
  path = OUT / "streams.json"
  done = _load(path)
  noisy = {c["name"] for c in configs[:noise_configs]}
  for c in configs:
    for variant in ("base", "dev4", "noise"):
      k = f"{c['name']}/{variant}"
      if k in done or (variant == "noise" and c["name"] not in noisy):
        continue
      ldjax, jax, data, cfg, model, variables = _setup(
          c, devices=4 if variant == "dev4" else 1)
      if variant == "noise":
        variables = _noisy(jax, variables, c["seed"])
      recs, t0, cpu0 = [], time.time(), time.process_time()
      summ = ldjax.fit(model, data, cfg, "sgd", start=ldjax.Start(variables),
                       hooks=ldjax.Hooks(on_epoch=lambda r: recs.append(r.to_json()),
                                         progress=False))
      done[k] = dict(P=[r["scores"]["P"] for r in recs], stages=recs[0]["scores"]["stages"],
                     loss=[r["loss"] for r in recs], test_accuracy=summ.get("test_accuracy"),
                     wall_s=time.time() - t0, cpu_s=time.process_time() - cpu0)
      _save(path, done)
      print(f"record {k}: {time.time() - t0:.1f} s", flush=True)


def _validated() -> dict:
  """Every validation run so far, from all the validate_*.json files."""
  out = {}
  for f in sorted(OUT.glob("validate_*.json")):
    out |= _load(f)
  return out


def validate(configs, rules=("paper", "stable"), bf16_configs: int | None = None,
             part: str = "", reverse: bool = False) -> None:
  """Drop runs; `part` names this process's file (validate_RULE{part}.json), so that
  two processes (one of them `reverse`, from the last configuration) may share the work."""
  variants = {"base": dict(devices=1), "dev4": dict(devices=4),
              "bf16": dict(devices=1, feature_dtype="bfloat16")}
  bf16 = {c["name"] for c in configs[:bf16_configs]}
  order = configs[::-1] if reverse else configs
  for rule, c, (variant, over) in itertools.product(rules, order, variants.items()):
    if variant == "bf16" and c["name"] not in bf16:
      continue
    k = f"{c['name']}/{rule}/{variant}"
    if k in _validated():
      continue
    path = OUT / f"validate_{rule}{part}.json"
    ldjax, jax, data, cfg, model, variables = _setup(c, decision_rule=rule, **over)
    recs, t0, cpu0 = [], time.time(), time.process_time()
    summ = ldjax.fit(model, data, cfg, "drop", start=ldjax.Start(variables),
                     hooks=ldjax.Hooks(on_epoch=lambda r: recs.append(r.to_json()),
                                       progress=False))
    decisions = [None if r["decision"] is None else
                 {k2: v for k2, v in r["decision"].items() if k2 != "P_used"} for r in recs]
    done = _load(path)
    done[k] = dict(events=summ["drop_events"], decisions=decisions,
                   P=[r["scores"]["P"] for r in recs], test_accuracy=summ.get("test_accuracy"),
                   wall_s=time.time() - t0, cpu_s=time.process_time() - cpu0)
    _save(path, done)
    print(f"validate {k}: {summ['drop_events']} {time.time() - t0:.1f} s", flush=True)


# -- analysis ---------------------------------------------------------------------------------

EPS = (1e-4, 1e-3, 1e-2)   # absolute Gaussian noise on P, offline
EPS_DRAWS = 10


def _eps_flips(rule, streams, configs, eps: float) -> dict:
  """Decisions changed by eps * N(0, 1) added to P (this epoch's and last epoch's).

  Over every recorded run (base, dev4, noise) and decision epoch, EPS_DRAWS draws
  each (seed 0): the local sensitivity to rounding-size changes of P, before
  training amplifies them."""
  rng = np.random.default_rng(0)
  n = flips = 0
  for c in configs:
    for v in ("base", "dev4", "noise"):
      st = streams.get(f"{c['name']}/{v}")
      if st is None:
        continue
      for e in range(c["warmup"], c["epochs"] - 1):
        p, prev = np.asarray(st["P"][e]), np.asarray(st["P"][e - 1])
        ref = rule(p, prev)
        for _ in range(EPS_DRAWS):
          n += 1
          flips += rule(p + eps * rng.standard_normal(p.shape),
                        prev + eps * rng.standard_normal(prev.shape)) != ref
  return dict(decisions=n, flips=flips)


def analyze(configs) -> dict:
  streams = _load(OUT / "streams.json")
  out = {}
  for name, rule in CANDIDATES.items():
    row = {}
    for pert in ("dev4", "noise"):
      pairs = flips = epochs_n = epoch_flips = 0
      for c in configs:
        a, b = streams.get(f"{c['name']}/base"), streams.get(f"{c['name']}/{pert}")
        if a is None or b is None:
          continue
        pairs += 1
        fa = first_decision(rule, a["P"], c["warmup"], c["epochs"])
        fb = first_decision(rule, b["P"], c["warmup"], c["epochs"])
        flips += fa != fb
        da = epoch_decisions(rule, a["P"], c["warmup"], c["epochs"])
        db = epoch_decisions(rule, b["P"], c["warmup"], c["epochs"])
        epochs_n += len(da)
        epoch_flips += sum(x != y for x, y in zip(da, db))
      row[pert] = dict(pairs=pairs, flips=flips, epochs=epochs_n, epoch_flips=epoch_flips)
    firsts = [first_decision(rule, streams[k]["P"], c["warmup"], c["epochs"])
              for c in configs for k in (f"{c['name']}/base",) if k in streams]
    row["eps"] = {f"{eps:g}": _eps_flips(rule, streams, configs, eps) for eps in EPS}
    row["drops"] = dict(runs=len(firsts), dropped=sum(f is not None for f in firsts),
                        first=[f for f in firsts])
    out[name] = row
  _save(OUT / "analysis.json", out)
  return out


def _events_key(events):
  return [(e["epoch"], e["cut"]) for e in events]


def validate_summary(configs) -> dict:
  v = _validated()
  out = {}
  for rule in ("paper", "stable"):
    row = {}
    for pert in ("dev4", "bf16"):
      pairs = flips = first_flips = 0
      for c in configs:
        a, b = v.get(f"{c['name']}/{rule}/base"), v.get(f"{c['name']}/{rule}/{pert}")
        if a is None or b is None:
          continue
        pairs += 1
        ea, eb = _events_key(a["events"]), _events_key(b["events"])
        flips += ea != eb
        first_flips += ea[:1] != eb[:1]
      row[pert] = dict(pairs=pairs, flips=flips, first_flips=first_flips)
    base = [v[f"{c['name']}/{rule}/base"] for c in configs if f"{c['name']}/{rule}/base" in v]
    row["runs"] = len(base)
    row["dropped"] = sum(bool(r["events"]) for r in base)
    row["events"] = sum(len(r["events"]) for r in base)
    row["final_cut"] = [r["events"][-1]["cut"] if r["events"] else 0 for r in base]
    runs = [r for k, r in v.items() if k.split("/")[1] == rule]
    row["not_paying"] = [sum(any(d and d.get("not_paying") for d in r["decisions"])
                             for r in runs), len(runs)]
    out[rule] = row
  return out


def report(configs) -> None:
  an = analyze(configs)
  vs = validate_summary(configs)
  streams = _load(OUT / "streams.json")
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()
  lines = ["# Decisions that do not flip on rounding (issue #28, item 3)", "",
           f"Command: `nice -n 10 python experiments/stability_study.py all`; commit {commit}; "
           f"load average at report time {os.getloadavg()[0]:.2f} (2 shared CPU cores); "
           f"XLA_FLAGS={os.environ['XLA_FLAGS']}.", "",
           f"{len(configs)} configurations (`CONFIGS` in the script; seeds "
           f"{sorted({c['seed'] for c in configs})}), {_BASE['epochs']} epochs, warm-up "
           f"{_BASE['warmup']}, {_BASE['train_size']} training images, no augmentation. "
           f"Noise: params * (1 + {NOISE:g} N(0,1)), key 10000 + seed.", "",
           "## Offline: first decisions on SGD score streams", "",
           "A flip: the base and perturbed run's first decision (epoch, cut) differ. "
           "Epoch flips: the cut each decision epoch would take if nothing dropped before. "
           "Dropped: base runs in which the rule drops within the run.", "",
           "| rule | 4 devices: flips | noise 1e-7: flips | 4 dev: epoch flips "
           "| noise: epoch flips | dropped | first (epoch, cut) of the base runs |",
           "|---|---|---|---|---|---|---|"]
  for name, r in an.items():
    d4, nz, dr = r["dev4"], r["noise"], r["drops"]
    firsts = " ".join("-" if f is None else f"{f[0]}:{f[1]}" for f in dr["first"])
    lines.append(f"| {name} | {d4['flips']}/{d4['pairs']} | {nz['flips']}/{nz['pairs']} | "
                 f"{d4['epoch_flips']}/{d4['epochs']} | {nz['epoch_flips']}/{nz['epochs']} | "
                 f"{dr['dropped']}/{dr['runs']} | {firsts} |")
  diffs = {p: [] for p in ("dev4", "noise")}
  for c in configs:
    a = streams.get(f"{c['name']}/base")
    for p in diffs:
      b = streams.get(f"{c['name']}/{p}")
      if a and b:
        diffs[p].append([float(np.max(np.abs(np.subtract(x, y)))) for x, y in zip(a["P"], b["P"])])
  lines += ["", "Largest |P difference| over the stages per epoch (median over the pairs):", ""]
  for p, d in diffs.items():
    if d:
      lines.append(f"- {p}: " + ", ".join(f"epoch {i + 1}: {v:.2e}"
                                           for i, v in enumerate(np.median(d, axis=0))))
  lines += ["", "## Online: real Drop runs, the whole sequence of drop events", "",
            "Flips: the (epoch, cut) sequences of drop events differ (first: the first "
            "event differs). Runs that drop, events and final cuts: the base runs (1 "
            "device, float32). not_paying: runs (all variants) in which the stable rule's "
            "cost check refused a drop the rule proposed.", "",
            "| rule | 1 vs 4 devices: flips (first) | float32 vs bfloat16 store: flips (first) "
            "| runs that drop | drop events | final cuts | runs with a not_paying refusal |",
            "|---|---|---|---|---|---|---|"]
  for rule, r in vs.items():
    d4, bf = r["dev4"], r["bf16"]
    lines.append(f"| {rule} | {d4['flips']}/{d4['pairs']} ({d4['first_flips']}) | "
                 f"{bf['flips']}/{bf['pairs']} ({bf['first_flips']}) | {r['dropped']}/{r['runs']} | "
                 f"{r['events']} | {' '.join(map(str, r['final_cut']))} | "
                 f"{r['not_paying'][0]}/{r['not_paying'][1]} |")
  eps = ["", "## Offline: rounding-size noise on P", "",
         f"eps * N(0,1) added to P of this and last epoch, {EPS_DRAWS} draws per decision "
         "epoch of every recorded run; decisions changed out of decisions taken.", "",
         "| rule | " + " | ".join(f"eps = {e:g}" for e in EPS) + " |",
         "|---|" + "---|" * len(EPS)]
  for name, r in an.items():
    eps.append(f"| {name} | " + " | ".join(f"{r['eps'][f'{e:g}']['flips']}/"
                                          f"{r['eps'][f'{e:g}']['decisions']}" for e in EPS) + " |")
  lines += eps
  findings = OUT / "findings.md"   # written by hand after reading the tables
  if findings.exists():
    lines += ["", findings.read_text().rstrip()]
  _save(OUT / "summary.json", dict(offline=an, online=vs, commit=commit,
                                   configs=configs, noise=NOISE))
  (OUT / "README.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("phase", choices=("record", "analyze", "validate", "report", "all"))
  ap.add_argument("--configs", type=int, default=len(CONFIGS), help="the first N only")
  ap.add_argument("--rules", default="paper,stable", help="validate: these rules")
  ap.add_argument("--noise-configs", type=int, default=None,
                  help="record: noise on the initial weights on the first N configurations only")
  ap.add_argument("--part", default="", help="validate: a suffix of this process's file")
  ap.add_argument("--reverse", action="store_true", help="validate: from the last configuration")
  ap.add_argument("--bf16-configs", type=int, default=None,
                  help="validate: bfloat16 stores on the first N configurations only")
  args = ap.parse_args()
  OUT.mkdir(parents=True, exist_ok=True)
  configs = CONFIGS[:args.configs]
  import ldjax
  ldjax.compile_cache.enable("/tmp/ldjax_stability_cache")
  if args.phase in ("record", "all"):
    record(configs, args.noise_configs)
  if args.phase in ("validate", "all"):
    validate(configs, tuple(args.rules.split(",")), args.bf16_configs, args.part, args.reverse)
  if args.phase in ("analyze", "report", "all"):
    report(configs)


if __name__ == "__main__":
  main()
