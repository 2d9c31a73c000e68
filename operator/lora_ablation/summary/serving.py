"""What a user must know before deploying an adapter, derived from its results: facts of today's serving
engines and flags the trainer raised. Pure."""

from __future__ import annotations

from lora_ablation.api.trial import TrialResult

DORA_VLLM = (
    "DoRA: vLLM cannot serve DoRA adapters unmerged today (its feature request vllm-project/vllm#10849 is "
    "open); serve it merged into the weights (the merged TPOT column), one model per adapter"
)


def serving_notes(variant: str, results: list[TrialResult]) -> list[str]:
    notes = [DORA_VLLM] if variant == "dora" else []
    flagged = [r for r in results if r.adapter_effect is not None and r.adapter_effect.unchanged]
    if flagged:
        notes.append(
            f"the adapter leaves the outputs unchanged on the eval prompts in {len(flagged)} of {len(results)} "
            f"trial(s) ({', '.join(r.trial for r in flagged[:3])}{'...' if len(flagged) > 3 else ''}): it serves "
            "the base model; check the learning rate and that training took steps"
        )
    return notes
