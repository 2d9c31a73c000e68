"""Bring the base model and dataset files to local disk: hf://, s3://, pvc:// (a mounted claim) or a path."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lora_ablation.api.spec import BaseModelSpec
from lora_ablation.storage.open import open_store
from lora_ablation.storage.store import StorageAccessDenied, StorageUnavailable
from lora_ablation_trainer.errors import DataError, PermanentTrialError, TransientTrialError

log = logging.getLogger(__name__)


# The operator mounts each PVC a trial references under this root (pvc://claim/path -> /mnt/pvc/claim/path)
# and a read-only model cache under /models; both are overridable for local runs and tests.
def pvc_root() -> Path:
    return Path(os.environ.get("LORA_ABLATION_PVC_ROOT", "/mnt/pvc"))


def model_cache() -> Path:
    return Path(os.environ.get("LORA_ABLATION_MODEL_CACHE", "/models"))


def local_path(uri: str) -> Path | None:
    """The local path a URI names, or None when it must be downloaded."""
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if uri.startswith("pvc://"):
        return pvc_root() / uri[len("pvc://") :]
    if uri.startswith("/"):
        return Path(uri)
    return None


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def _download(
    uri: str, target: Path, endpoint: str | None, region: str | None, single_file: bool, weights: bool = True
) -> Path:
    marker = target / (".complete" if weights else ".complete-no-weights")
    if marker.exists():
        return target / Path(uri).name if single_file else target
    target.mkdir(parents=True, exist_ok=True)
    try:
        if single_file:
            parent, _, name = uri.rpartition("/")
            store = open_store(parent, endpoint, region)
            (target / name).write_bytes(store.read_bytes(name))
        else:
            store = open_store(uri.rstrip("/"), endpoint, region)
            if weights:
                count = store.download_prefix("", target)
            else:  # config and tokenizer only: enough to resolve modules and tokenize
                keys = [k for k in store.list() if not k.endswith(WEIGHT_SUFFIXES)]
                for key in keys:
                    (target / key).parent.mkdir(parents=True, exist_ok=True)
                    (target / key).write_bytes(store.read_bytes(key))
                count = len(keys)
            if count == 0:
                raise PermanentTrialError(f"{uri}: no objects under this prefix")
    except FileNotFoundError as error:
        raise DataError(f"{uri}: does not exist ({error})") from None
    except StorageAccessDenied as error:
        raise PermanentTrialError(str(error)) from None
    except StorageUnavailable as error:
        raise TransientTrialError(str(error)) from None
    marker.touch()  # a pod killed mid-download re-downloads instead of using half a model
    return target / Path(uri).name if single_file else target


def fetch_file(uri: str, cache: Path, endpoint: str | None = None, region: str | None = None) -> Path:
    path = local_path(uri)
    if path is not None:
        if not path.is_file():
            raise DataError(f"{uri}: file does not exist ({path})")
        return path
    return _download(uri, cache / "data" / _safe(uri), endpoint, region, single_file=True)


def fetch_model(
    spec: BaseModelSpec, cache: Path, endpoint: str | None = None, region: str | None = None, weights: bool = True
) -> Path:
    """A local folder with the model; weights=False fetches only config and tokenizer files (preflight)."""
    path = local_path(spec.uri)
    if path is None and spec.uri.startswith("hf://"):
        cached = model_cache() / spec.uri[len("hf://") :]
        path = cached if (cached / "config.json").is_file() else None
        if path is None:
            return _from_hub(spec, cache, weights)
    if path is None:
        path = _download(
            spec.uri, cache / "model" / _safe(spec.uri), endpoint, region, single_file=False, weights=weights
        )
    if not (path / "config.json").is_file():
        raise PermanentTrialError(f"baseModel.uri {spec.uri}: no config.json in {path}")
    return path


def _from_hub(spec: BaseModelSpec, cache: Path, weights: bool = True) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo = spec.uri[len("hf://") :]
    try:
        return Path(
            snapshot_download(
                repo,
                revision=spec.revision,
                token=os.environ.get("HF_TOKEN") or None,
                cache_dir=cache / "hub",
                allow_patterns=["*.json", "*.model", "*.txt", "*.jinja", "tokenizer*"]
                + (["*.safetensors"] if weights else []),
            )
        )
    except (RepositoryNotFoundError, GatedRepoError) as error:
        raise PermanentTrialError(
            f"baseModel.uri {spec.uri}: not found or gated ({type(error).__name__}); check the name and tokenSecretRef"
        ) from None
    except (LocalEntryNotFoundError, OSError) as error:
        raise TransientTrialError(f"baseModel.uri {spec.uri}: hub unreachable ({type(error).__name__})") from None


def _safe(uri: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in uri)[-120:]
