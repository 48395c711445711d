"""Training: pure scores and decisions (`scoring`), jitted steps (`steps`), the compiled
programs of a cut (`programs`), the drop state and the end-of-epoch decision (`decisions`),
one epoch (`epoch`), test evaluation (`evaluation`), a whole run (`fit`) and what it records
(`records`), strategies side by side (`compare`) and progress bars (`progress`).
"""
