"""Tests of `ldjax.compile_cache`: where the cache goes, errors, and that runs use it."""

import platform

import jax
import pytest

from ldjax import run
from ldjax.runs import compile_cache
from ldjax.errors import UsageError


def test_resolve(monkeypatch, tmp_path):
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
  assert compile_cache.resolve(None) == tmp_path / "env"
  assert compile_cache.resolve(str(tmp_path / "flag")) == tmp_path / "flag"
  assert compile_cache.resolve("off") is None and compile_cache.resolve("OFF") is None
  monkeypatch.setenv(compile_cache.ENV, "off")
  assert compile_cache.resolve(None) is None
  monkeypatch.delenv(compile_cache.ENV)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  default = compile_cache.resolve(None)
  assert default == compile_cache.default_dir()
  assert default.parent == tmp_path / "xdg" / "ldjax" / "xla"
  assert default.name == compile_cache.host_tag()


def cpuinfo(tmp_path, name, *processors):
  path = tmp_path / name
  path.write_text("\n".join(
      f"processor\t: {i}\nmodel name\t: {model}\ncpu MHz\t\t: {mhz}\nflags\t\t: {flags}\n"
      for i, (model, mhz, flags) in enumerate(processors)))
  return path


def test_host_tag_follows_the_cpu_model_and_flags_only(tmp_path):
  tag = compile_cache.host_tag
  base = tag(cpuinfo(tmp_path, "a", ("Xeon", "2100.0", "sse avx2"), ("Xeon", "2100.0", "sse avx2")))
  # The clock and later processors do not change it: the same CPU gets the same directory.
  assert tag(cpuinfo(tmp_path, "b", ("Xeon", "3400.5", "sse avx2"), ("Other", "1.0", "x"))) == base
  # Another feature set or model is another directory (code compiled for AVX-512 must not
  # reach a CPU without it).
  assert tag(cpuinfo(tmp_path, "c", ("Xeon", "2100.0", "sse avx2 avx512f"))) != base
  assert tag(cpuinfo(tmp_path, "d", ("EPYC", "2100.0", "sse avx2"))) != base
  assert base.startswith(platform.machine() or "cpu")
  # Without /proc/cpuinfo (not Linux) there is still a tag.
  assert compile_cache.host_tag(tmp_path / "missing")
  assert compile_cache.host_tag() == compile_cache.host_tag()


def test_using_restores_the_previous_setting(tmp_path):
  before = jax.config.jax_compilation_cache_dir
  with compile_cache.using(tmp_path / "a"):
    assert compile_cache.enabled()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "a")
    with compile_cache.using(None):
      assert not compile_cache.enabled()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "a")
  assert jax.config.jax_compilation_cache_dir == before


def test_unwritable_directory_is_a_usage_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  before = jax.config.jax_compilation_cache_dir
  with pytest.raises(UsageError, match="compilation cache"):
    compile_cache.enable(blocker / "cache")
  assert jax.config.jax_compilation_cache_dir == before


def test_cli_unwritable_cache_exits_2(capsys, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  workdir = tmp_path / "wd"
  code = run.main(["--epochs", "1", "--warmup", "0", "--no-progress", "--workdir", str(workdir),
                   "--compilation-cache", str(blocker / "cache")])
  out, err = capsys.readouterr()
  assert code == 2, err
  assert err.startswith("error: cannot write the compilation cache") and err.count("\n") == 1
  assert "Traceback" not in err
  assert not workdir.exists()
