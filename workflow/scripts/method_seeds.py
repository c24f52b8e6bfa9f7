"""A task's method tables over its prompt seeds, mean +- std (selfrepair.stages.methods.method_seeds)."""

from selfrepair.stages.joblog import logged
from selfrepair.stages.methods import method_seeds

with logged(snakemake.log[0], snakemake):
    method_seeds(
        tables=list(snakemake.input.tables),
        seeds=list(snakemake.params.seeds),
        csv=snakemake.output.csv,
        html_path=snakemake.output.html,
        title=f"Methods over prompt seeds: {snakemake.wildcards.model} on "
        f"{snakemake.wildcards.seeded_task}, set {snakemake.wildcards.ablation_set}",
    )
