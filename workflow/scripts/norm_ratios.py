"""Final-LN scale and residual-norm ratios of one model's configured heads under one ablation
(selfrepair.stages.mechanisms.norms_stage)."""

from selfrepair.analysis.substitutes import heads_with_picks
from selfrepair.stages.ablation import set_threads
from selfrepair.stages.joblog import logged
from selfrepair.stages.mechanisms import norms_stage

with logged(snakemake.log[0]):
    set_threads(snakemake.threads)
    norms_stage(
        tokens=snakemake.input.tokens,
        bounds=snakemake.params.bounds,
        engine_shards=list(snakemake.input.shards),
        entry=snakemake.params.model,
        checkpoint=snakemake.input.get("model_dir"),
        device=snakemake.params.device,
        dtype=snakemake.params.dtype,
        heads=heads_with_picks(snakemake.params.heads, snakemake.input.picks),
        ablation=snakemake.wildcards.ablation,
        top_fraction=snakemake.params.top_fraction,
        batch_size=snakemake.params.batch_size,
        mean_include_bos=snakemake.params.mean_include_bos,
        out=snakemake.output.norms,
        attrs=snakemake.params.attrs,
    )
