"""Experiment tracking (spec.tracking.mlflow): a trial's MLflow run, nested under the ablation's run, and the
summary on the ablation's run. The MLflow client is imported inside lora_ablation.tracking.mlflow_runs' functions
only, so importing this package (or running an ablation without tracking) loads no MLflow code."""

from lora_ablation.tracking.mlflow_runs import ablation_run, log_summary, log_trial

__all__ = ["ablation_run", "log_summary", "log_trial"]
