"""analysis: pure reductions of the stores' contents into what the figures, tables and pages show.

Each module turns xarray Datasets (or numpy arrays) into smaller ones, with no I/O, no torch and
no model: reduce (per-head summaries, the top-token selection, effect drops), intervals
(bootstrap intervals over tokens), attribution (who repairs whom), mechanisms (the neuron, norm
and self-reinforcement figures' quantities), substitutes (heads picked at run time by the
paper's criteria), tables (the CSV and HTML tables), training (self-repair over training) and
explorer (what a head's page shows).

May import: numpy, pandas, xarray, selfrepair.config and selfrepair.variables, and each other.
Never stages (which open stores and call these), engine, models or plots: this room runs in the
analysis environment (envs/analysis.yaml), which has no torch.
"""
