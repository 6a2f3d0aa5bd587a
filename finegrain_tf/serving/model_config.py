"""Which models and versions the dev server serves, read as stock TF Serving reads it.

`read_model_config(path)` parses a `--model_config_file`: a text-format `ModelServerConfig` proto
(`tensorflow_serving.config.model_server_config_pb2`, see export/models.config) with one `config` per
model: `name`, `base_path`, `model_platform` ("tensorflow"), `model_version_policy`
(`latest { num_versions }` (default 1), `all {}`, `specific { versions }`) and `version_labels`
(label -> version, e.g. "stable" -> 1, "canary" -> 2).
"""

from __future__ import annotations

import dataclasses
import os

POLICIES = ("latest", "all", "specific")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One served model: its name, `<base>/<name>` directory of versions, version policy and labels."""

    name: str
    base_path: str
    policy: str = "latest"
    num_versions: int = 1  # policy "latest"
    versions: tuple = ()  # policy "specific"
    labels: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.name:
            raise ValueError("a served model needs a name")
        if not self.base_path:
            raise ValueError(f"model {self.name!r} needs a base_path")
        if self.policy not in POLICIES:
            raise ValueError(f"model {self.name!r}: version policy must be one of {POLICIES}, got {self.policy!r}")
        if self.policy == "latest" and self.num_versions < 1:
            raise ValueError(f"model {self.name!r}: latest.num_versions must be >= 1, got {self.num_versions}")
        if self.policy == "specific" and not self.versions:
            raise ValueError(f"model {self.name!r}: a specific version policy needs at least one version")
        for label, version in self.labels.items():
            if not isinstance(version, int) or version < 1:
                raise ValueError(f"model {self.name!r}: label {label!r} must point to a positive version, "
                                 f"got {version!r}")

    def wanted(self, available: list[int]) -> list[int]:
        """The versions to serve among those on disk (ascending)."""
        if self.policy == "latest":
            return sorted(available)[-self.num_versions:]
        if self.policy == "all":
            return sorted(available)
        return sorted(set(available) & set(self.versions))


def read_model_config(path: str) -> list[ModelConfig]:
    """The models of a text-format `ModelServerConfig` file; relative base paths are resolved against
    the file's folder. Raises ValueError naming the file and the problem."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    if not os.path.isfile(path):
        raise ValueError(f"model config file {path!r} not found")
    config = model_server_config_pb2.ModelServerConfig()
    with open(path) as f:
        try:
            text_format.Parse(f.read(), config)
        except text_format.ParseError as e:
            raise ValueError(f"model config file {path}: {e}") from None
    if config.WhichOneof("config") != "model_config_list" or not config.model_config_list.config:
        raise ValueError(f"model config file {path}: expected a model_config_list with at least one config")
    models, names = [], set()
    for entry in config.model_config_list.config:
        if entry.model_platform not in ("", "tensorflow"):
            raise ValueError(f"model config file {path}: model {entry.name!r} has model_platform "
                             f"{entry.model_platform!r}; only 'tensorflow' is served")
        if entry.name in names:
            raise ValueError(f"model config file {path}: model name {entry.name!r} appears twice")
        names.add(entry.name)
        policy = entry.model_version_policy.WhichOneof("policy_choice") or "latest"
        base_path = entry.base_path
        if base_path and not os.path.isabs(base_path):
            base_path = os.path.join(os.path.dirname(os.path.abspath(path)), base_path)
        models.append(ModelConfig(
            name=entry.name, base_path=base_path, policy=policy,
            num_versions=entry.model_version_policy.latest.num_versions or 1,
            versions=tuple(entry.model_version_policy.specific.versions),
            labels={k: int(v) for k, v in entry.version_labels.items()}))
    return models
