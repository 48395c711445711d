"""Training: pure scores and decisions (`scoring`), jitted steps (`steps`), the compiled
programs of a cut and of a run (`programs`), the drop state and the end-of-epoch decision
(`decisions`), one epoch (`epoch`), a run's pieces built from its settings (`assembly`),
test evaluation (`evaluation`), a whole run (`fit`) and what it records (`records`),
strategies side by side (`compare`) and progress bars (`progress`).
"""
