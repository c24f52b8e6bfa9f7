# The model keys each rule makes tokens for: a model's own (tokenize), or a training checkpoint's
# (share_tokens: its model's rows, tokenized once per model, under the checkpoint's key).
OWN_MODEL_KEYS = "|".join(re.escape(m) for m in MODELS)
CHECKPOINT_KEYS = "|".join(re.escape(m) for m in CHECKPOINTS) or "(?!)"


rule train_tokenizer:
    input:
        corpus_files=lambda w: sr_inputs.corpus_files(
            config["tokenizers"][w.tokenizer]["corpus"]
        ),
    output:
        tokenizer=directory("resources/tokenizers/{tokenizer}"),
    log:
        "results/logs/train_tokenizer/{tokenizer}.log",
    benchmark:
        "results/benchmarks/train_tokenizer/{tokenizer}.tsv"
    conda:
        "../../envs/engine.yaml"
    params:
        vocab_size=lambda w: config["tokenizers"][w.tokenizer]["vocab_size"],
        corpus=lambda w: config["tokenizers"][w.tokenizer]["corpus"],
    script:
        "../scripts/train_tokenizer.py"


rule train_model:
    input:
        tokenizer=lambda w: f"resources/tokenizers/{ENTRIES[w.model]['train']['tokenizer']}",
        corpus_files=lambda w: sr_inputs.corpus_files(
            config["tokenizers"][ENTRIES[w.model]["train"]["tokenizer"]]["corpus"]
        ),
    output:
        checkpoint=directory("resources/models/{model}"),
        metrics="results/{model}/training.json",
    log:
        "results/logs/train_model/{model}.log",
    benchmark:
        "results/benchmarks/train_model/{model}.tsv"
    conda:
        "../../envs/engine.yaml"
    threads: model_threads
    resources:
        mem_mb=model_mem_mb,
        runtime=model_runtime,
    params:
        train=lambda w: ENTRIES[w.model]["train"],
        corpus=lambda w: config["tokenizers"][ENTRIES[w.model]["train"]["tokenizer"]][
            "corpus"
        ],
        seq_len=DATA["seq_len"],
    script:
        "../scripts/train_model.py"


rule tokenize:
    input:
        unpack(model_input),
        corpus_files=sr_inputs.corpus_files(DATA["corpus"]),
    output:
        tokens=directory("results/{model}/tokens.zarr"),
    log:
        "results/logs/tokenize/{model}.log",
    benchmark:
        "results/benchmarks/tokenize/{model}.tsv"
    wildcard_constraints:
        model=OWN_MODEL_KEYS,
    conda:
        "../../envs/engine.yaml"
    params:
        model=model_entry,
        corpus=DATA["corpus"],
        seq_len=DATA["seq_len"],
        n_rows=sr_config.n_rows(DATA),
        shard_rows=DATA["shard_rows"],
        seed=config["seed"],
        attrs=run_attrs,
    script:
        "../scripts/tokenize.py"


rule share_tokens:
    input:
        unpack(model_input),
        tokens=lambda w: f"results/{CHECKPOINTS[w.model]['checkpoint']['model']}/tokens.zarr",
    output:
        tokens=directory("results/{model}/tokens.zarr"),
    log:
        "results/logs/share_tokens/{model}.log",
    benchmark:
        "results/benchmarks/share_tokens/{model}.tsv"
    wildcard_constraints:
        model=CHECKPOINT_KEYS,
    conda:
        "../../envs/engine.yaml"
    params:
        model=model_entry,
        shard_rows=DATA["shard_rows"],
        attrs=run_attrs,
    script:
        "../scripts/share_tokens.py"
