"""Training with markers: config, BPE tokenizer, model building, the data step, the Ray Train loop."""
