"""stages: one function per workflow rule, named after the rule, called by its script
(workflow/scripts/<rule>.py), in one module per stage of the DAG (data, clean, ablation,
summaries, mechanisms, figures, repair, repair_figures, training, explorer). The only code that
opens and writes stores and files: store (checksummed Zarr stores, atomic writes), integrity
(what a store's files must be), records (JSON records with their digest and place), job (the
model job every model stage runs: tokens, rows, model, device) and joblog (logs and
provenance).

May import every other room: config, data, models, engine, mechanisms, analysis, plots,
variables. Nothing else imports stages (but the public API's store openers, re-exported by
selfrepair, and rules/common.smk, which reads the JSON records through stages.records). Stages
of the analysis environment (summaries, figures, repair_figures, training, explorer's page
writer) import torch and the engine only inside the functions that run a model. A task's
rules that are text rules' `use rule ... with:` variants run the text rule's function.
"""
