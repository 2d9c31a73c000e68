"""Storage: file:// and s3:// stores, the trial files read as evidence, the ablation's record, the summary
published."""
