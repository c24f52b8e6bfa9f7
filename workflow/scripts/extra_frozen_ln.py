"""Beyond the paper: per-layer self-repair as measured, with the final LayerNorm frozen, and
with every LayerNorm frozen at its clean scale."""

from selfrepair.analysis.reduce import frozen_ln_layers
from selfrepair.plots.common import open_by_model, save_figure
from selfrepair.plots.layernorm import frozen_ln_self_repair
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0]):
    p = snakemake.params
    normal = open_by_model(snakemake.input.normal, p.models, p.n_tokens)
    frozen = open_by_model(snakemake.input.frozen, p.models, p.n_tokens)
    layers = {m: frozen_ln_layers(normal[m], frozen[m]) for m in p.models}
    fig = frozen_ln_self_repair(layers, p.top_fraction)
    save_figure(fig, snakemake.output.pdf, snakemake.output.png)
