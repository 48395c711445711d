"""Committed results name commands anyone can run from a clone (issue 29, item 6).

No text file under experiments/results may hold an absolute path of the machine
a run was made on: its checkout or a worktree (/work/...) or a scratch directory
(/tmp/...). Paths in the repository are written relative to its root
(experiments/repo_paths.py), scratch directories OUT/ (experiments/results/README.md,
"Paths in these files"); data every Debian user has (/usr/share/datasets/...)
stays absolute.
"""

import pathlib
import re

RESULTS = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "results"
# /work/ or /tmp/ where a path starts: not inside a longer path or word (a/tmp/, ./tmp/, ~/tmp/).
MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(?:work|tmp)/")


def test_results_hold_no_machine_paths():
  texts = []
  for path in sorted(p for p in RESULTS.rglob("*") if p.is_file()):
    try:
      texts.append((path, path.read_text(encoding="utf-8")))
    except UnicodeDecodeError:   # figures and other binary files
      continue
  assert len(texts) > 100, "the scan must find the committed results"
  bad = [f"{path.relative_to(RESULTS.parents[1])}:{n}: {line.strip()[:160]}"
         for path, text in texts
         for n, line in enumerate(text.splitlines(), 1) if MACHINE_PATH.search(line)]
  assert not bad, (f"{len(bad)} lines with an absolute path of the machine that ran them "
                   "(write it repo-relative, or OUT/ for a scratch directory):\n"
                   + "\n".join(bad[:20]))


def test_the_scan_finds_a_machine_path():
  assert MACHINE_PATH.search("--workdir /tmp/run1") and MACHINE_PATH.search("/work/main/x")
  assert not MACHINE_PATH.search("idx:/usr/share/datasets/fashion-mnist OUT/tmp/x")
