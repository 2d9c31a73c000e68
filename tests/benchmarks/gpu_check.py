"""The GPU check a session lent a GPU runs in one call (`bash scripts/gpu-check.sh`), with no downloads: Llama-shaped
models of ~0.5B and ~1.5B parameters are built in code (throughput does not depend on the weights' values), in
bf16. It measures, in one run:

- throughput: tokens/s of the seed study's reference recipe on Hugging Face Trainer (batch 2 x accumulation 4),
  of our loop at that recipe, and of our loop packed (padding-free), for each model; MFU from FLOPs counted as
  NeMo Automodel's `llama3_flops` counts them (every GEMM 3x: forward, activation and weight gradients; causal
  attention halved; the logits included; the mean example length as the sequence), against the GPU's dense bf16
  peak. LoRA skips the frozen weights' gradient GEMMs, so the work done is about 2/3 of that count; the
  convention is NeMo's so the figures compare with theirs;
- fused training: K = 1, 2, 4, 8 adapters trained together against the same trials one after another, at the
  seed recipe's batch, on the ~0.5B model: ratio, tokens/s per adapter, MFU of the fused step, max abs difference;
- TPOT noise: the coefficient of variation of TPOT p95 over repeated runs of the latency protocol;
- the bf16 divergence path: one adapter of a fused batch diverges; it alone gets failure.json;
- peak memory of a real trial against the plan's estimate for it.

It writes gpu-check.json and gpu-check.md to $OUT (or --out). `--dry` runs every section on CPU on a tiny model in
float32, in seconds, so the script cannot rot (the suite runs it); its figures mean nothing.

    bash scripts/gpu-check.sh [--dry] [--out DIR] [--sections throughput,fused,tpot,divergence,memory]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

SECTIONS = ("throughput", "fused", "tpot", "divergence", "memory")


def markdown(report: dict) -> str:
    def num(value, fmt=",.0f"):
        return "-" if value is None else format(value, fmt)

    def spread(s, fmt=",.0f"):
        return f"{num(s['median'], fmt)} [{num(s['min'], fmt)}-{num(s['max'], fmt)}]"

    lines = [f"# GPU check: {report['device']}{' (dry run: figures mean nothing)' if report['dry'] else ''}", "",
             f"{report['flops']}", ""]  # fmt: skip
    if "throughput" in report:
        lines += ["| model | run | tokens/s median [min-max] | vs reference | MFU % |", "|---|---|---|---|---|"]
        lines += [
            f"| {r['model']} ({r['params'] / 1e9:.2f}B) | {r['run']} | {spread(r['tokens_per_second'])} | "
            f"{spread(r['vs_reference'], '.2f')} | {num(r['mfu_pct'], '.1f')} |"
            for r in report["throughput"]
        ]
        lines.append("")
    if "fused" in report:
        lines += ["| K | fused/sequential | tokens/s per adapter fused vs sequential | MFU % (fused) | peak GiB | "
                  "max abs diff |", "|---|---|---|---|---|---|"]  # fmt: skip
        lines += [
            f"| {r['k']} | {spread(r['fused_over_sequential'], '.2f')}x | "
            f"{num(r['tokens_per_second_per_adapter']['fused'])} vs "
            f"{num(r['tokens_per_second_per_adapter']['sequential'])} | {num(r['mfu_pct'], '.1f')} | "
            f"{r['peak_bytes'] / 2**30:.2f} | {r['max_abs_difference']:.1e} |"
            for r in report["fused"]
        ]
        lines.append("")
    if "tpot" in report:
        t = report["tpot"]
        lines += [f"TPOT p95 over {t['runs']} runs: CV {t['cv_pct']:.2f}% (goal <= 3%)", ""]
    if "divergence" in report:
        d = report["divergence"]
        lines += [f"Divergence ({d['dtype']}): sane -> {d['sane']}, wild -> {d['wild']}: "
                  f"{'ok' if d['ok'] else 'NOT OK'} ({d['wild_message']})", ""]  # fmt: skip
    if "memory" in report:
        m = report["memory"]
        lines += [f"Peak memory ({m['what']}): {num(m['measured_bytes'] and m['measured_bytes'] / 2**30, '.2f')} GiB "
                  f"measured, {m['estimate_bytes'] / 2**30:.2f} GiB estimated ({m['breakdown_gib']}); "
                  f"measured/estimate {num(m['measured_over_estimate'], '.2f')}", ""]  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="every section on CPU on a tiny model (the suite runs it)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-out")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    args = parser.parse_args()
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; expected some of {', '.join(SECTIONS)}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch  # after the arguments are checked: the sections' imports take seconds

    if not args.dry and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry for the CPU dry run, or on a GPU machine")
    import gpu_sections

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        check = gpu_sections.Check(args.dry, Path(tmp))
        report: dict = {"device": check.device_name, "dry": args.dry, "dtype": check.dtype_name,
                        "peak_bf16_tflops": check.peak,
                        "flops": "MFU: NeMo Automodel's llama3_flops per token (fwd + both backward GEMMs, causal "
                                 "attention halved, logits; mean example length) x tokens/s over the dense bf16 peak; "
                                 "LoRA really does about 2/3 of that count."}  # fmt: skip
        for section in wanted:
            begun = time.perf_counter()
            report[section] = getattr(gpu_sections, section)(check)
            report.setdefault("seconds", {})[section] = round(time.perf_counter() - begun, 1)
            (out / "gpu-check.json").write_text(json.dumps(report, indent=2))  # what is done survives a timeout
            print(f"{section}: done in {report['seconds'][section]} s", flush=True)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu-check.md").write_text(markdown(report) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
