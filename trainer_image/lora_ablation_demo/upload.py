"""Put the quickstart's tiny model and data into an S3 bucket, for the cluster quickstart (docs/cluster-quickstart.md):

    python -m lora_ablation_demo.quickstart examples                      # builds examples/models/tiny-llama
    python -m lora_ablation_demo.upload examples s3://lora-quickstart --endpoint http://localhost:9000

ROOT/models/tiny-llama/* goes to <uri>/models/tiny-llama/ and ROOT/data/<dataset>/*.jsonl to <uri>/data/<dataset>/,
the URIs examples/cluster-quickstart.yaml names. The bucket is created when it does not exist (a fresh MinIO has
none). Credentials are the usual AWS_* variables. Exit 2 when the model has not been built or the URI is not s3://.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lora_ablation.storage.s3 import LOCAL_HINT, S3Store
from lora_ablation.storage.store import StorageError

MODEL = Path("models") / "tiny-llama"


def _client(endpoint: str | None, bucket: str):
    client = S3Store.make_client(endpoint, None, retries=3, timeout=10.0)
    from botocore.exceptions import ClientError  # boto3 is a core dependency; botocore comes with it

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket", "NotFound"}:
            raise
        client.create_bucket(Bucket=bucket)
        print(f"created bucket {bucket}")
    return client


def upload(root: Path, uri: str, endpoint: str | None) -> list[str]:
    """Upload the model and the datasets under `root`; the prefixes written, as URIs."""
    if not uri.startswith("s3://") or not uri[len("s3://") :].split("/", 1)[0]:
        raise ValueError(f"{uri!r} is not an s3://bucket[/prefix] URI")
    if not (root / MODEL / "config.json").is_file():
        raise FileNotFoundError(f"{root / MODEL} has no config.json: build it first with "
                                f"`python -m lora_ablation_demo.quickstart {root}`")  # fmt: skip
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    store = S3Store(bucket, prefix.strip("/"), _client(endpoint, bucket), LOCAL_HINT)
    written = []
    for local, key in [(root / MODEL, MODEL.as_posix()), (root / "data", "data")]:
        count = store.upload_dir(local, key)
        written.append(f"{store.uri.rstrip('/')}/{key}/ ({count} files)")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_ablation_demo.upload", description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, help="the folder `python -m lora_ablation_demo.quickstart ROOT` wrote")
    parser.add_argument("uri", help="s3://bucket[/prefix] to upload to")
    parser.add_argument("--endpoint", help="S3 endpoint URL (MinIO: http://localhost:9000 through a port-forward)")
    args = parser.parse_args(argv)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        for line in upload(args.root, args.uri, args.endpoint):
            print(f"uploaded {line}")
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except StorageError as error:  # its message ends with the hint already
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (BotoCoreError, ClientError) as error:  # creating the bucket
        print(f"error: {error}; {LOCAL_HINT}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
