"""The TF Serving directory layout of an export: `<base>/<model_name>/<integer version>/`.

One place for the names of what an export holds (its assets, the warmup file), the choice of the
next version number, and the staged write: a version is written into a hidden temporary directory
beside its final place and renamed into place, so a polling server never sees half a version.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile

ASSETS = "assets"
CLASS_NAMES_FILE = "class_names.txt"
EXPORT_INFO_FILE = "export_info.json"
GALLERY_IDS_FILE = "gallery_ids.txt"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_model_name(model_name: str) -> str:
    """A TF Serving model name is one plain directory name (letters, digits, '_', '-', '.')."""
    if not isinstance(model_name, str) or not _MODEL_NAME.fullmatch(model_name):
        raise ValueError(f"model_name must be a plain directory name (letters, digits, '_', '-', '.'), "
                         f"got {model_name!r}")
    return model_name


def versions(model_base: str) -> list[int]:
    """Integer version directories under `<base>/<model_name>`, ascending."""
    if not os.path.isdir(model_base):
        return []
    return sorted(int(d) for d in os.listdir(model_base) if d.isdigit())


def next_version(model_base: str) -> int:
    """1 + the largest integer version directory under `<base>/<model_name>` (1 if none)."""
    return max(versions(model_base), default=0) + 1


def version_dir(base_path: str, model_name: str, version: int | None) -> tuple[str, int]:
    """(`<base>/<model_name>/<version>`, version) for a new export; None picks the next free version."""
    model_base = os.path.join(base_path, check_model_name(model_name))
    if version is not None and (isinstance(version, bool) or int(version) < 1):
        raise ValueError(f"version must be a positive integer, got {version!r}")
    version = int(version) if version is not None else next_version(model_base)
    path = os.path.join(model_base, str(version))
    if os.path.exists(path):
        raise ValueError(f"export directory {path!r} already exists; pick another --version")
    return path, version


@contextlib.contextmanager
def staged_version(export_dir: str):
    """Yields (staging dir for the SavedModel, staging dir for asset files); on success renames the
    SavedModel into `export_dir` atomically, and always removes the staging area."""
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(export_dir)}-", dir=parent)
    try:
        assets = os.path.join(tmp_dir, "asset-files")
        os.makedirs(assets)
        out_dir = os.path.join(tmp_dir, "model")
        yield out_dir, assets
        os.rename(out_dir, export_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def read_export_info(export_dir: str) -> dict:
    """`assets/export_info.json` of an export (input size, preprocessing, signatures, index, ...)."""
    path = os.path.join(export_dir, ASSETS, EXPORT_INFO_FILE)
    if not os.path.exists(path):
        raise ValueError(f"{export_dir!r} is not a finegrain_tf export (no {ASSETS}/{EXPORT_INFO_FILE})")
    with open(path) as f:
        return json.load(f)


def read_class_names(export_dir: str) -> list[str]:
    with open(os.path.join(export_dir, ASSETS, CLASS_NAMES_FILE)) as f:
        return [line.rstrip("\n") for line in f if line.strip()]
