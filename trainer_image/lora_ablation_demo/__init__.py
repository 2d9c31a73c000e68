"""Tiny real models, tokenizers and datasets built in code, for the README's demo, the tests and the benchmarks
(nothing can be downloaded where they run). Not part of the trainer: lora_ablation_trainer never imports it."""
