"""What a run is and keeps: its settings and presets (`config`), its work directory
(`workdir`), its checkpoints (`checkpoint`) and JAX's compilation cache (`compile_cache`).
"""
