"""How many storage requests the result cache makes, counted by botocore against moto's S3 server: a listing of
the prefix answers what it can (first reads of a restart, rechecks once re-listed), so the operator asks per file
only where a listing would cost more."""

from __future__ import annotations

from test_reconcile import result_for

from lora_ablation.storage.open import open_store
from lora_ablation_operator.collector import ResultCache, Seen


def _store(s3_bucket: tuple[str, str], names: list[str]):
    endpoint, bucket = s3_bucket
    store = open_store(f"s3://{bucket}/ns/demo", endpoint, "us-east-1")
    for i, name in enumerate(names):
        store.write_json(f"{name}/result.json", result_for(name, i / 100).result.model_dump(mode="json", by_alias=True))
    return store


def test_a_listing_taken_now_answers_first_reads_and_rechecks(s3_bucket, s3_requests):
    names = [f"t{i}" for i in range(12)]
    store = _store(s3_bucket, names)
    clock = [0.0]
    cache = ResultCache(recheck_seconds=60, clock=lambda: clock[0])
    s3_requests.clear()

    listing, at, taken = cache.listing("u", store)
    assert taken and s3_requests == {"ListObjectsV2": 1}
    seen = Seen(listing.versions("result.json"), at=at, complete=True)
    absent = [f"gone{i}" for i in range(5)]  # never wrote a result: the complete listing says so
    got = cache.collect("u", store, names + absent, seen=seen)
    assert [got[n].result.eval.score for n in names] == [i / 100 for i in range(12)]
    assert all(got[n].result is None and got[n].problem is None for n in absent)
    assert s3_requests == {"ListObjectsV2": 1, "GetObject": 12}  # no HeadObject, nothing for the absent ones

    s3_requests.clear()
    again = cache.collect("u", store, names, scope="unit-1:True", seen=seen)  # the same objects in another scope
    assert again == {n: got[n] for n in names} and not s3_requests

    store.write_text("t3/result.json", "garbage")
    clock[0] = 61
    s3_requests.clear()
    listing, at, taken = cache.listing("u", store, checks=cache.checks_due("u"))
    assert taken, "one listing is cheaper than a version request per due read"
    seen = Seen(listing.versions("result.json"), at=at, complete=True)
    rechecked = cache.collect("u", store, names, seen=seen)
    assert "not valid JSON" in rechecked["t3"].problem and rechecked["t4"].result.eval.score == 0.04
    assert s3_requests == {"ListObjectsV2": 1, "GetObject": 1}  # only the rewritten file is read again


def test_without_a_newer_listing_reads_are_checked_per_file(s3_bucket, s3_requests):
    names = [f"t{i}" for i in range(6)]
    store = _store(s3_bucket, names)
    clock = [0.0]
    cache = ResultCache(recheck_seconds=60, clock=lambda: clock[0])
    listing, at, _ = cache.listing("u", store)
    old = Seen(listing.versions("result.json"), at=at)  # not complete: taken before the units finished
    clock[0] = 1
    late = ["t6", "t7"]  # published after the listing: it cannot say they are absent
    store.write_json("t6/result.json", result_for("t6", 0.9).result.model_dump(mode="json", by_alias=True))
    s3_requests.clear()
    got = cache.collect("u", store, names + late, scope="unit-2:True", seen=old)
    assert got["t6"].result.eval.score == 0.9 and got["t7"].result is None
    # Listed files are read without a version request, unlisted ones asked per file; t7 is absent: no GET.
    assert s3_requests == {"GetObject": 7, "HeadObject": 2}
    clock[0] = 62
    s3_requests.clear()
    assert cache.listing("u", store, checks=0)[2] is False  # nothing asks: no new listing
    cache.collect("u", store, names, scope="unit-2:True", seen=old)
    assert s3_requests == {"HeadObject": 6}  # the listing is older than the reads: each version is asked
