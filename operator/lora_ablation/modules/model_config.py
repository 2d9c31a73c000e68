"""Find a base model's config.json without loading the model: local folders, s3:// prefixes, the hub."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lora_ablation.modules.known_models import KNOWN_MODEL_CONFIGS


class ModelConfigUnavailable(LookupError):
    """The config could not be read here (no access, offline); planning proceeds without estimates."""


def _local_path(uri: str) -> Path | None:
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if uri.startswith("/") or uri.startswith("."):
        return Path(uri)
    return None


def known_model_config(uri: str, revision: str | None = None) -> dict[str, Any] | None:
    """config.json of an hf:// model in the built-in table, without any I/O; None for anything else."""
    repo = uri[len("hf://") :] if uri.startswith("hf://") else None
    if repo in KNOWN_MODEL_CONFIGS and revision in (None, "main"):
        return dict(KNOWN_MODEL_CONFIGS[repo])
    return None


def load_model_config(uri: str, revision: str | None = None, endpoint: str | None = None) -> tuple[dict[str, Any], str]:
    """(config.json as a dict, where it came from). Raises ModelConfigUnavailable with the reason."""
    path = _local_path(uri)
    if path is None and not uri.startswith(("hf://", "s3://", "pvc://")) and Path(uri).is_dir():
        path = Path(uri)
    if path is not None:
        config_file = path / "config.json" if path.is_dir() or not path.suffix else path
        if not config_file.is_file():
            raise ModelConfigUnavailable(f"{config_file} does not exist")
        return json.loads(config_file.read_text()), str(config_file)
    if uri.startswith("s3://"):
        return _from_s3(uri, endpoint)
    if uri.startswith("pvc://"):
        raise ModelConfigUnavailable(
            "pvc:// models are only readable inside the cluster (the preflight Job resolves them)"
        )
    repo = uri[len("hf://") :] if uri.startswith("hf://") else uri
    if repo in KNOWN_MODEL_CONFIGS and revision in (None, "main"):
        return dict(KNOWN_MODEL_CONFIGS[repo]), f"built-in table ({repo})"
    return _from_hub(repo, revision)


def _from_s3(uri: str, endpoint: str | None) -> tuple[dict[str, Any], str]:
    import boto3  # core dependency; imported here to keep `import lora_ablation` fast
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = uri[len("s3://") :].partition("/")
    key = (prefix.rstrip("/") + "/config.json").lstrip("/")
    try:
        client = boto3.client("s3", endpoint_url=endpoint) if endpoint else boto3.client("s3")
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except (BotoCoreError, ClientError) as error:
        raise ModelConfigUnavailable(f"cannot read s3://{bucket}/{key}: {error}") from None
    return json.loads(body), f"s3://{bucket}/{key}"


def _from_hub(repo: str, revision: str | None) -> tuple[dict[str, Any], str]:
    if os.environ.get("HF_HUB_OFFLINE", "") in {"1", "true", "TRUE"}:
        raise ModelConfigUnavailable(f"{repo}: HF_HUB_OFFLINE is set and the model is not in the built-in table")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/{repo}/resolve/{revision or 'main'}/config.json"
    request = urllib.request.Request(url)
    token = os.environ.get("HF_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read()), url
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        raise ModelConfigUnavailable(f"{repo}: hub not reachable ({error})") from None
