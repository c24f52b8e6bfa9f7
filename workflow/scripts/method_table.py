"""Each method's ranking of a task's expected backups (selfrepair.stages.methods.method_table)."""

from selfrepair.stages.joblog import logged
from selfrepair.stages.methods import method_table

with logged(snakemake.log[0], snakemake):
    method_table(
        methods=snakemake.input.methods,
        expected=snakemake.params.expected,
        metric=snakemake.input.metric,
        csv=snakemake.output.csv,
        html_path=snakemake.output.html,
        figure=snakemake.output.png,
        figure_pdf=snakemake.output.pdf,
        bootstrap=dict(snakemake.params.bootstrap),
        anchors=bool(snakemake.params.anchors),
        atp=snakemake.input.get("atp"),
        title=f"Methods: {snakemake.wildcards.model} on {snakemake.wildcards.task}, "
        f"set {snakemake.wildcards.ablation_set}",
    )
