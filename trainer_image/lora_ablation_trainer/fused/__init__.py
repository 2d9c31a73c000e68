"""Several trials' adapters trained together in one pass over one base model (execution.fusedTraining)."""
