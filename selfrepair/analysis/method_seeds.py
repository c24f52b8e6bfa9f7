"""The method comparison over prompt seeds (a task's prompt_seeds): per method the mean and std
over the seeds of each seed's ROC-AUC, average precision and precision@k, as CoAx reports them
(experiments/paper/backup_recovery_full.py: `np.mean`, `np.std`, i.e. the population std,
ddof 0, over seeds 1, 15, 22, 8), beside each seed's values with its bootstrap interval over
prompts. No I/O."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from selfrepair.analysis.methods import COAX_ROC_AUC

__all__ = ["COAX_ROC_AUC_STD", "SEED_METRICS", "seed_prompts", "seed_summary"]

# The metrics averaged over seeds, and each seed's columns shown beside them.
SEED_METRICS = ("roc_auc", "average_precision", "precision_at_k")
PER_SEED = ("roc_auc", "roc_auc_low", "roc_auc_high", "average_precision", "precision_at_k")

# CoAx's std of the ROC-AUC over its four prompt seeds (release 2.1.0,
# results/reference_metrics.json, headline_backup_recovery.roc_auc_mean_std), beside
# analysis.methods.COAX_ROC_AUC's means.
COAX_ROC_AUC_STD = {
    "amplification_ratio_energy": 0.0008,
    "compensation_energy": 0.0041,
    "conditional_gradient": 0.0047,
    "conditional_energy": 0.0035,
    "atp_star_graddrop": 0.0087,
    "atp": 0.0096,
    "single_energy": 0.0066,
    "eap_ig": 0.0273,
}


def seed_summary(tables: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """One row per method: `<metric>_mean` and `<metric>_std` over the seeds (population std)
    of SEED_METRICS, n_seeds, CoAx's mean and std where it has the method (coax_roc_auc,
    coax_roc_auc_std, else NaN), then each seed's PER_SEED columns as `<column>_seed<s>` and its
    prompt count, `n_prompts_seed<s>` (seed_prompts).

    Args:
        tables: prompt seed -> that seed's method table (analysis.methods.method_table, indexed
            by method), in the order the seeds are listed; every table of the same methods.
    """
    if not tables:
        raise ValueError("no seed's method table to summarise")
    first = next(iter(tables.values()))
    for seed, table in tables.items():
        if set(table.index) != set(first.index):
            raise ValueError(f"seed {seed}'s method table has other methods than the first's")
    prompts = seed_prompts(tables)
    rows = []
    for method in first.index:
        row: dict[str, float | str] = {"method": method}
        for metric in SEED_METRICS:
            values = np.array([t.loc[method, metric] for t in tables.values()], float)
            row[f"{metric}_mean"], row[f"{metric}_std"] = values.mean(), values.std()
        row["n_seeds"] = len(tables)
        row["coax_roc_auc"] = COAX_ROC_AUC.get(method, float("nan"))
        row["coax_roc_auc_std"] = COAX_ROC_AUC_STD.get(method, float("nan"))
        for seed, table in tables.items():
            row |= {f"{c}_seed{seed}": float(table.loc[method, c]) for c in PER_SEED}
            row[f"n_prompts_seed{seed}"] = prompts[seed]
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def seed_prompts(tables: Mapping[int, pd.DataFrame]) -> dict[int, int]:
    """Each seed's prompt count, from its method table's n_prompts column (one value per
    table: every method is measured on the same prompts).

    Args:
        tables: as seed_summary's.
    """
    counts = {}
    for seed, table in tables.items():
        if "n_prompts" not in table:
            raise ValueError(
                f"seed {seed}'s method table has no n_prompts column: rerun rule method_table"
            )
        if table["n_prompts"].nunique() != 1:
            raise ValueError(f"seed {seed}'s method table gives its methods other prompt counts")
        counts[seed] = int(table["n_prompts"].iloc[0])
    return counts
