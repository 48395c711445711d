"""Presets as TOML files: the paper's protocols, the embedded data's default, the strong
recipe (`ldjax.runs.config.load_preset`; `python -m ldjax.run --presets` lists them)."""
