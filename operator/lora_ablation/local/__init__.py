"""`lora-ablation run`: the whole ablation on one machine, no Kubernetes."""
