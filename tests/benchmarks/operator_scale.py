"""Operator at scale: N ablations x M trials against kmock's emulated API server and moto S3, in one run:

- apply -> every permitted trial Job exists, against the baseline measured in the same run: a bare loop of client
  calls creating the same Jobs from the same builder (on a second emulated API server), and their ratio;
- Job completion -> visible in the ablation's status (p50, p95), one completion at a time over a sample;
- a burst: every other Job completing at once -> every ablation Ready;
- live progress (`--running-seconds`): every trial writes progress.json as a trainer does while the operator runs at
  its default 30 s progress period; storage requests counted at the server by operation, status patches by the API;
- API requests per trial over its whole life, by client, verb and resource (as the API server counted them);
- the operator's memory: resident at start, peak (VmHWM), and per trial;
- CPU time of one pass triggered by one Job completing in an ablation of ~maxTrials trials (in-process).

Preflight is off so the figures are about trial Jobs.

    python tests/benchmarks/operator_scale.py [--ablations 100] [--trials 10] [--sample 60] [--no-cpu]
    python tests/benchmarks/operator_scale.py --ablations 100 --trials 100 --no-cpu      # 10,000 trials
    python tests/benchmarks/operator_scale.py --running-seconds 95 --no-cpu  # 1,000 trials reporting progress
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lora_ablation.api import parse_ablation
from lora_ablation.planning.plan import plan_trials
from lora_ablation_operator.jobs import trial_job
from lora_ablation_operator.settings import Settings
from support.cluster import Cluster, manifest
from support.kube import ServedApi, write_kubeconfig
from support.s3 import aws_test_env, s3_client, start_moto_server

MODULE_SETS = [["qkv"], ["o_proj"], ["fc1"], ["fc2"], ["o_proj", "fc1"], ["qkv", "fc2"], ["o_proj", "fc2"],
               ["qkv", "fc1"], ["all"], ["attn"], ["mlp"], ["q_proj"], ["v_proj"], ["k_proj"]]  # fmt: skip
RANKS = [4, 8, 16, 32, 64, 128, 256, 2]
GROUP, VERSION, PLURAL = "lora.ablation.dev", "v1alpha1", "loraablations"


def ablation_manifests(count: int, trials: int, bucket: str) -> list[dict]:
    """`count` ablations of `trials` trials each: a baseline plus module sets x ranks, all allowed to run at once."""
    configs = [(m, r) for r in RANKS for m in MODULE_SETS][: trials - 1]
    if len(configs) < trials - 1:
        raise SystemExit(f"at most {len(MODULE_SETS) * len(RANKS) + 1} trials per ablation here")
    module_sets = sorted({tuple(m) for m, _ in configs}, key=lambda m: MODULE_SETS.index(list(m)))
    ranks = sorted({r for _, r in configs})
    out = []
    for index in range(count):
        body = manifest(f"scale-{index:03d}", bucket, search={"moduleSets": [list(m) for m in module_sets],
                                                              "ranks": ranks},
                        execution={"parallelism": trials, "maxFailedTrials": trials})  # fmt: skip
        out.append(body)
    return out


def wait(check, timeout: float, what: str, poll: float = 0.05) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if check():
            return time.perf_counter() - started
        time.sleep(poll)
    raise SystemExit(f"timed out waiting for {what}")


def bare_loop(manifests: list[dict], watched: bool = False) -> tuple[float, int]:
    """The baseline: the same Jobs, built by the same pure builder, created by a plain loop of calls against a
    second emulated API server (so that the operator's watches never see them). `watched`: with a client watching
    Jobs meanwhile, as the operator does: the single-threaded emulator then also streams every Job it stores."""
    with ServedApi() as api:
        config = kubernetes.client.Configuration()
        kubeconfig = write_kubeconfig(Path("/tmp/operator-scale/baseline-kubeconfig"), api.url)
        kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=config)
        batch = kubernetes.client.BatchV1Api(kubernetes.client.ApiClient(config))
        jobs = []
        for body in manifests:
            ablation = parse_ablation(body)
            for trial in plan_trials(ablation.metadata.name, "default", ablation.spec).trials:
                jobs.append(trial_job(ablation.metadata.name, "default", ablation.spec, trial, Settings()))
        seen = threading.Event()
        watcher = threading.Thread(target=_watch_jobs, args=(batch, len(jobs), seen), daemon=True)
        if watched:
            watcher.start()
            time.sleep(0.5)
        started = time.perf_counter()
        for job in jobs:
            batch.create_namespaced_job("default", job, _preload_content=False)
        if watched:
            seen.wait(120)
        return time.perf_counter() - started, len(jobs)


def _watch_jobs(batch: kubernetes.client.BatchV1Api, expected: int, seen: threading.Event) -> None:
    stream = kubernetes.watch.Watch().stream(batch.list_namespaced_job, "default", timeout_seconds=300)
    for count, _ in enumerate(stream, start=1):
        if count >= expected:
            seen.set()
            return


class StorageRequests(logging.Handler):
    """Every request moto's server answered, by operation: werkzeug logs one line per request (the operator runs in
    its own process, so counting at the server is what sees its requests)."""

    LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>[^ ?]*)(?P<query>\?[^ ]*)? HTTP')

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: Counter[str] = Counter()
        self._lock_counts = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        found = self.LINE.search(record.getMessage())
        if not found:
            return
        method, path, query = found["method"], found["path"], found["query"] or ""
        if "list-type" in query or (method == "GET" and path.count("/") <= 1):
            kind = "list"
        else:
            kind = f"{method} {path.rsplit('/', 1)[-1] if path.endswith('.json') else 'other'}"
        with self._lock_counts:
            self.counts[kind] += 1

    def snapshot(self) -> Counter[str]:
        with self._lock_counts:
            return Counter(self.counts)


def count_storage_requests() -> StorageRequests:
    counter = StorageRequests()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False  # counted, not printed
    werkzeug.addHandler(counter)
    return counter


def progress_doc(trial: str, step: int, total: int) -> bytes:
    """What a trainer publishes every few seconds while it trains (lora_ablation.storage's progress record)."""
    return json.dumps({"trial": trial, "step": step, "totalSteps": total, "trainLoss": 2.0 - step / total,
                       "tokensPerSecond": 4096.0, "elapsedSeconds": 2.0 * step, "etaSeconds": 2.0 * (total - step),
                       "updatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()  # fmt: skip


def report_progress(cluster: Cluster, jobs: list[dict], seconds: float, every: float) -> int:
    """Every trial writes its progress every `every` seconds for `seconds`, as running trainers do; returns the
    number of writes."""
    keys = [(cluster.trial_spec(j)["name"], cluster.result_key(j).replace("result.json", "progress.json"))
            for j in jobs]  # fmt: skip
    writes, step, ends = 0, 0, time.perf_counter() + seconds
    with ThreadPoolExecutor(8) as pool:
        while time.perf_counter() < ends:
            started, step = time.perf_counter(), step + 1
            bodies = [(key, progress_doc(trial, step, 100)) for trial, key in keys]
            list(pool.map(lambda kb: cluster.s3.put_object(Bucket=cluster.bucket, Key=kb[0], Body=kb[1]), bodies))
            writes += len(keys)
            time.sleep(max(0.0, min(every - (time.perf_counter() - started), ends - time.perf_counter())))
    return writes


def proc_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def scale_run(args: argparse.Namespace) -> None:
    total = args.ablations * args.trials
    workdir = Path("/tmp/operator-scale")
    workdir.mkdir(exist_ok=True)
    with aws_test_env():
        manifests = ablation_manifests(args.ablations, args.trials, "scale")
        baseline_seconds, baseline_jobs = bare_loop(manifests)
        watched_seconds, _ = bare_loop(manifests, watched=True)
        with ServedApi() as api:
            server, endpoint = start_moto_server()
            storage = count_storage_requests()
            s3_client(endpoint).create_bucket(Bucket="scale")
            cluster = Cluster(write_kubeconfig(workdir / "kubeconfig", api.url), endpoint, "scale", workdir)
            cluster.install_crd()
            os.environ["LORA_ABLATION_PREFLIGHT"] = "false"
            # The operator's own defaults, not the test harness's quicker ones.
            cluster.start_operator(interval=args.resync, verbose=False,
                                   min_pass_interval=str(Settings().min_pass_interval))  # fmt: skip
            time.sleep(3)  # Kopf lists and starts its watches before the clock starts
            pid = cluster.operator.pid
            rss_start = proc_mib(pid, "VmRSS")
            tally_before = Counter(api.emulator.tally)
            started = time.perf_counter()
            for body in manifests:
                cluster.apply(body)

            def trial_jobs() -> list[dict]:
                return api.objects("batch", "v1", "jobs")

            wait(lambda: api.count("batch", "v1", "jobs") >= total, 900, "all trial Jobs", poll=0.02)
            create_seconds = time.perf_counter() - started
            print(
                f"[progress] all {total} Jobs in {create_seconds:.2f} s (bare loop {baseline_seconds:.2f} s, with a "
                f"watch {watched_seconds:.2f} s); operator RSS {proc_mib(pid, 'VmRSS'):.1f} MiB",
                flush=True,
            )
            if args.only_create:  # e.g. to profile this phase alone (LORA_ABLATION_TEST_PYTHON="py-spy record ...")
                cluster.stop_operator()
                server.stop()
                print(f"apply -> all {total} Jobs: {create_seconds:.2f} s; bare loop {baseline_seconds:.2f} s; "
                      f"ratio {create_seconds / baseline_seconds:.2f}; with a watch {watched_seconds:.2f} s, ratio "
                      f"{create_seconds / watched_seconds:.2f}")  # fmt: skip
                return
            jobs = trial_jobs()
            live = None
            if args.running_seconds > 0:  # every trial runs a while, reporting progress, before any finishes
                storage_before, api_before = storage.snapshot(), Counter(api.emulator.tally)
                writes = report_progress(cluster, jobs, args.running_seconds, args.progress_every)
                live_api = Counter(api.emulator.tally)
                live_api.subtract(api_before)
                live_storage = storage.snapshot()
                live_storage.subtract(storage_before)
                live = (writes, live_storage, live_api, proc_mib(pid, "VmRSS"))
                print(f"[progress] {len(jobs)} trials reported progress for {args.running_seconds:.0f} s "
                      f"({writes} writes); operator RSS {live[3]:.1f} MiB", flush=True)
            for job in jobs:
                cluster.write_result(job, 0.5)

            def succeeded(name: str) -> int:
                found = api.get(GROUP, VERSION, PLURAL, name, "default") or {}
                return ((found.get("status") or {}).get("trials") or {}).get("succeeded") or 0

            by_ablation: dict[str, list[dict]] = {}
            for job in jobs:
                by_ablation.setdefault(job["metadata"]["labels"]["lora.ablation.dev/ablation"], []).append(job)
            sample = [group[0] for group in list(by_ablation.values())[: args.sample]]
            latencies = []
            for job in sample:  # one completion at a time: from the Job's status write to the ablation's status
                name = job["metadata"]["labels"]["lora.ablation.dev/ablation"]
                before = succeeded(name)
                cluster.finish_job(job["metadata"]["name"])
                latencies.append(wait(lambda name=name, before=before: succeeded(name) > before, 60,
                                      "a completion in status", poll=0.005))  # fmt: skip
            print(f"[progress] single completions: p50 {percentile(latencies, .5):.3f} s, p95 "
                  f"{percentile(latencies, .95):.3f} s", flush=True)  # fmt: skip
            finished = {j["metadata"]["name"] for j in sample}
            rest = [j for j in jobs if j["metadata"]["name"] not in finished]
            burst_started = time.perf_counter()
            for job in rest:
                cluster.finish_job(job["metadata"]["name"])
            burst_finished = time.perf_counter()

            def all_ready() -> bool:
                items = api.objects(GROUP, VERSION, PLURAL)
                return len(items) == args.ablations and all(
                    any(c["type"] == "Ready" and c["status"] == "True" for c in (i.get("status") or {})
                        .get("conditions", [])) for i in items)  # fmt: skip

            wait(all_ready, 900, "every ablation Ready", poll=0.1)
            final_seconds = time.perf_counter() - burst_finished
            tally = Counter(api.emulator.tally)
            tally.subtract(tally_before)
            rss_peak, rss_end = proc_mib(pid, "VmHWM"), proc_mib(pid, "VmRSS")
            cluster.stop_operator()
            server.stop()

    ours = {k: v for k, v in tally.items() if k[0] in {"kopf", "lora-ablation-operator"} and v > 0}
    requests = sum(ours.values())
    storage_total = storage.snapshot()
    print(f"{args.ablations} ablations x {args.trials} trials = {total} trial Jobs (preflight off, resync "
          f"{args.resync}s)")  # fmt: skip
    print(f"  apply -> all permitted Jobs created:      {create_seconds:8.2f} s")
    print(f"  baseline: bare loop creating {baseline_jobs} Jobs:  {baseline_seconds:8.2f} s "
          f"({baseline_jobs / baseline_seconds:.0f} Jobs/s)")  # fmt: skip
    print(f"  ratio operator/baseline (Job creation):    {create_seconds / baseline_seconds:8.2f}   (goal <= 1.5)")
    print(f"  the bare loop with a Job watch open:       {watched_seconds:8.2f} s; operator/that "
          f"{create_seconds / watched_seconds:.2f}")  # fmt: skip
    print(f"  Job completion -> status, {len(latencies)} single completions: p50 {percentile(latencies, .5):.3f} s, "
          f"p95 {percentile(latencies, .95):.3f} s, max {max(latencies):.3f} s   (goal p95 <= 1 s)")  # fmt: skip
    print(f"  burst of {len(rest)} completions (written in {burst_finished - burst_started:.1f} s) -> all Ready: "
          f"{final_seconds:.2f} s after the last")  # fmt: skip
    print(f"  API requests per trial, whole life:        {requests / total:8.2f}   (goal <= 4)")
    for (client, verb, resource), count in sorted(ours.items(), key=lambda kv: -kv[1]):
        print(f"      {client:24s} {verb:7s} {resource:28s} {count:7d}  {count / total:6.3f}/trial")
    if live is not None:
        writes, live_storage, live_api, live_rss = live
        periods = args.running_seconds / 30.0
        reads = live_storage["GET progress.json"]
        patches = sum(v for (c, verb, res), v in live_api.items()
                      if c in {"kopf", "lora-ablation-operator"} and verb == "patch" and res == PLURAL)  # fmt: skip
        print(f"  live progress, {total} trials running {args.running_seconds:.0f} s (writes every "
              f"{args.progress_every:.0f} s, {writes} in all; operator period 30 s):")
        print(f"      progress reads: {reads} = {reads / total / periods:.2f} per running trial per 30 s   "
              f"(goal <= 1); status patches: {patches} = {patches / args.ablations / periods:.2f} per ablation "
              f"per 30 s; operator RSS then {live_rss:.1f} MiB")  # fmt: skip
        other = {k: v for k, v in live_storage.items() if k != "GET progress.json" and not k.startswith("PUT")}
        print(f"      other storage requests meanwhile: {dict(other) or 'none'}")
    operator_storage = {k: v for k, v in storage_total.items() if not k.startswith("PUT")}
    print(f"  storage requests by the operator, whole life: {sum(operator_storage.values()) / total:.2f} per trial "
          f"({', '.join(f'{k} {v}' for k, v in sorted(operator_storage.items()))})")
    print(
        f"  operator memory: start {rss_start:.1f} MiB, end {rss_end:.1f} MiB, peak {rss_peak:.1f} MiB "
        f"(goal <= 200 at 1,000 trials); {(rss_peak - rss_start) * 1024 / total:.1f} KiB per trial above start"
    )


def reconcile_cpu(trials_wanted: int) -> None:
    """One pass of an ablation of ~maxTrials trials, all but one finished, after that one finishes: CPU seconds
    of the pass's own thread (the emulated API server and moto run in other threads and are not counted)."""
    from lora_ablation_operator import collector, kube
    from lora_ablation_operator.observe import compact_job
    from lora_ablation_operator.planning import PlanCache
    from lora_ablation_operator.policy import Policy
    from lora_ablation_operator.reconcile_pass import Snapshot, run_pass

    ds = manifest("x", "cpu")["spec"]["datasets"][0]
    per_dataset = len(MODULE_SETS[:10]) * 5 * 2 + 1
    datasets = [{**ds, "name": f"d{i}"} for i in range(max(1, trials_wanted // per_dataset))]
    body = manifest("cpu", "cpu", datasets=datasets, search={"moduleSets": MODULE_SETS[:10],
                    "ranks": [4, 8, 16, 32, 64], "variants": ["lora", "dora"]},
                    execution={"parallelism": 5000, "maxFailedTrials": 10})  # fmt: skip
    workdir = Path("/tmp/operator-scale")
    workdir.mkdir(parents=True, exist_ok=True)  # --cpu-only runs without the scale run that made it
    with aws_test_env(), ServedApi() as api:
        server, endpoint = start_moto_server()
        s3_client(endpoint).create_bucket(Bucket="cpu")
        cluster = Cluster(write_kubeconfig(workdir / "cpu-kubeconfig", api.url), endpoint, "cpu", workdir)
        cluster.install_crd()
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig)  # the pass's own client (kube.py) loads this
        kube._client.cache_clear()
        cluster.apply(body)
        stored = cluster.ablation("cpu")
        settings = Settings(preflight=False, default_storage_endpoint=endpoint, policy=Policy.open())
        ablation = parse_ablation(body)
        trials = plan_trials("cpu", "default", ablation.spec).trials
        jobs = {}
        for trial in trials:
            job = trial_job("cpu", "default", ablation.spec, trial, settings)
            cluster.write_result(job, 0.5)
            jobs[trial.name] = compact_job(job)
        done = [{"type": "Complete", "status": "True"}]
        for name in list(jobs)[:-1]:
            jobs[name]["status"]["conditions"] = done
        results, plans = collector.ResultCache(300.0), PlanCache()
        s3_requests = _count_s3_requests()
        collector._cached_root_store.cache_clear()  # the pass's storage client is made after this, and counted
        first_cpu, first_wall = time.thread_time(), time.perf_counter()
        first = run_pass(  # a restarted operator's first pass: lists the prefix, reads every result once
            Snapshot(body=stored, status={}, jobs=jobs, pods=[]), settings, results, plans
        )
        first_cpu, first_wall = time.thread_time() - first_cpu, time.perf_counter() - first_wall
        first_requests = dict(s3_requests)
        status = first.written_status[0] if first.written_status else {}
        jobs[list(jobs)[-1]]["status"]["conditions"] = done
        cpu, wall = time.thread_time(), time.perf_counter()
        second = run_pass(
            Snapshot(body=stored, status=status, jobs=jobs, pods=[], previous_states=first.states),
            settings,
            results,
            plans,
        )
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        if not second.states or list(second.states.values()).count("Succeeded") != len(trials):
            raise SystemExit(f"the measured pass did not judge every trial: {second.states and len(second.states)}")
        status = second.written_status[0] if second.written_status else status
        idle_cpu = time.thread_time()
        idle = Snapshot(body=stored, status=status, jobs=jobs, pods=[], previous_states=second.states,
                        summary_written=len(trials), summary_written_at=time.monotonic())  # fmt: skip
        if os.environ.get("LORA_ABLATION_PROFILE"):  # where a pass's CPU goes, for the closing note
            import cProfile

            cProfile.runctx("run_pass(idle, settings, results, plans)", globals(), locals(),
                            os.environ["LORA_ABLATION_PROFILE"])  # fmt: skip
        else:
            run_pass(idle, settings, results, plans)
        idle_cpu = time.thread_time() - idle_cpu
        server.stop()
    by_kind = ", ".join(f"{kind} {n}" for kind, n in sorted(first_requests.items()))
    print(f"the first pass of an ablation of {len(trials)} trials (a restart: every result read): "
          f"{first_wall * 1000:.0f} ms wall, {first_cpu * 1000:.0f} ms CPU in its own thread (reads in the pool "
          f"not counted); storage requests: {sum(first_requests.values())} ({by_kind}), "
          f"{sum(first_requests.values()) / len(trials):.2f} per trial")
    print(f"one pass of an ablation of {len(trials)} trials (maxTrials 5000) after one Job completed: "
          f"{cpu * 1000:.0f} ms CPU, {wall * 1000:.0f} ms wall (status patch and summary write included); "
          f"a pass with nothing changed: {idle_cpu * 1000:.0f} ms CPU")  # fmt: skip


def _count_s3_requests() -> Counter[str]:
    """S3 requests by operation, counted by botocore for every client the default session makes from now on."""
    import boto3

    counts: Counter[str] = Counter()
    boto3.setup_default_session()
    boto3.DEFAULT_SESSION.events.register(
        "before-send.s3", lambda event_name, **_: counts.update([event_name.rsplit(".", 1)[-1]])
    )
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ablations", type=int, default=100)
    parser.add_argument("--trials", type=int, default=10, help="trials per ablation (baseline + configurations)")
    parser.add_argument("--sample", type=int, default=60, help="single completions timed to status")
    parser.add_argument("--running-seconds", type=float, default=0.0,
                        help="let every trial run and report progress this long before finishing (0: off)")
    parser.add_argument("--progress-every", type=float, default=10.0, help="seconds between a trial's progress writes")
    parser.add_argument("--resync", type=float, default=300.0, help="the operator's safety-net resync, seconds")
    parser.add_argument("--cpu-trials", type=int, default=5000, help="trials of the one-pass CPU measurement")
    parser.add_argument("--no-cpu", action="store_true", help="skip the one-pass CPU measurement")
    parser.add_argument("--only-create", action="store_true", help="stop once every Job exists")
    parser.add_argument("--cpu-only", action="store_true", help="only the one-pass CPU measurement")
    args = parser.parse_args()
    if not args.cpu_only:
        scale_run(args)
    if not args.no_cpu:
        reconcile_cpu(args.cpu_trials)


if __name__ == "__main__":
    main()
