"""data: corpora, their packing into rows of tokens, the demo tokenizer and models (store I/O: stages.data)."""
