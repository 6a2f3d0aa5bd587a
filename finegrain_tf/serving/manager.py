"""Version management of the dev server (a test harness speaking TF Serving's protocol).

`ModelManager` keeps the versions of one model that its `ModelConfig` policy wants loaded, the way
`tensorflow_model_server` does:
- a poll (`--file_system_poll_wait_seconds`) loads wanted versions found on disk through the TF1
  session loader (`SessionServable`), replays their warmup file, then unloads versions no longer wanted
  once a wanted one is serving (a failed new version never takes the old one down);
- a version that fails to load is retried with exponential back-off (`load_retry_interval` doubling)
  up to `max_num_load_retries` times, and served as soon as a retry succeeds (a copy still in
  progress at the first attempt is picked up when complete); after the last retry it is END with
  the error, and the policy falls back to the versions that loaded;
- requests hold a reference to the version they run on, so an unload waits for them.

`ServerCore` maps model names to managers and answers the requests shared by gRPC and REST.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time

from absl import logging
from tensorflow_serving.apis import get_model_status_pb2

from finegrain_tf.serving.model_config import ModelConfig
from finegrain_tf.serving.servable import RequestError, SessionServable

State = get_model_status_pb2.ModelVersionStatus.State


class _Loaded:
    """A loaded version and the number of requests running on it."""

    def __init__(self, servable: SessionServable):
        self.servable = servable
        self.inflight = 0
        self.retired = False


class _Failure:
    def __init__(self):
        self.count = 0
        self.retry_at = 0.0
        self.message = ""


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """How a manager loads its versions.

    Attributes:
      max_batch_size: larger requests are INVALID_ARGUMENT (0 = unlimited).
      enable_warmup: replay `assets.extra/tf_serving_warmup_requests` before serving a version.
      num_threads: session intra/inter-op threads (0 = TF default).
      max_num_load_retries: retries after a failed load (TF Serving's default: 5).
      load_retry_interval: seconds before the first retry; doubles after each failure.
    """

    max_batch_size: int = 0
    enable_warmup: bool = True
    num_threads: int = 0
    max_num_load_retries: int = 5
    load_retry_interval: float = 60.0


class ModelManager:
    """Loads, serves and unloads the versions of one model (`<base_path>/<integer version>/`).

    Args:
      config: the model's name, base path, version policy and labels.
      max_batch_size, enable_warmup, num_threads, max_num_load_retries, load_retry_interval: the
        `LoadOptions` (held as `.options`).
    """

    def __init__(self, config: ModelConfig, max_batch_size: int = 0, enable_warmup: bool = True,
                 num_threads: int = 0, max_num_load_retries: int = 5, load_retry_interval: float = 60.0):
        self.config = config
        self.options = LoadOptions(max_batch_size, enable_warmup, num_threads, max_num_load_retries,
                                   load_retry_interval)
        self._lock = threading.Lock()
        self._loaded: dict[int, _Loaded] = {}
        self._status: dict[int, tuple[int, str]] = {}  # version -> (state, error message)
        self._failures: dict[int, _Failure] = {}

    @property
    def name(self) -> str:
        return self.config.name

    def on_disk(self) -> list[int]:
        base = self.config.base_path
        if not os.path.isdir(base):
            return []
        return sorted(int(d) for d in os.listdir(base)
                      if d.isdigit() and os.path.exists(os.path.join(base, d, "saved_model.pb")))

    def _gave_up(self, version: int) -> bool:
        failure = self._failures.get(version)
        return failure is not None and failure.count > self.options.max_num_load_retries

    @property
    def loaded_versions(self) -> list[int]:
        return sorted(self._loaded)

    @property
    def current_version(self) -> int | None:
        """The version a request without version or label gets (the highest loaded)."""
        return max(self._loaded, default=None)

    def poll(self) -> bool:
        """Loads wanted versions (retrying failed ones when their back-off has passed), unloads the
        ones no longer wanted; True if the set of loaded versions changed."""
        wanted = self.config.wanted([v for v in self.on_disk() if not self._gave_up(v)])
        changed = False
        for version in wanted:
            failure = self._failures.get(version)
            if version not in self._loaded and (failure is None or time.monotonic() >= failure.retry_at):
                changed |= self._load(version)
        if any(v in self._loaded for v in wanted):
            for version in [v for v in self._loaded if v not in wanted]:
                self._retire(version)
                changed = True
        return changed

    def _load(self, version: int) -> bool:
        path = os.path.join(self.config.base_path, str(version))
        self._status[version] = (State.LOADING, "")
        logging.info("loading %s version %d from %s", self.name, version, path)
        try:
            servable = SessionServable(path, max_batch_size=self.options.max_batch_size,
                                       num_threads=self.options.num_threads)
            if self.options.enable_warmup:
                logging.info("replayed %d warmup request(s) for %s version %d", servable.warmup(), self.name,
                             version)
        except Exception as e:  # a bad version must not take the server down
            failure = self._failures.setdefault(version, _Failure())
            failure.count += 1
            failure.message = f"load failed: {e}"
            if failure.count > self.options.max_num_load_retries:
                logging.error("giving up on %s version %d after %d attempts: %s", self.name, version,
                              failure.count, e)
                self._status[version] = (State.END, failure.message)
            else:
                delay = self.options.load_retry_interval * 2 ** (failure.count - 1)
                failure.retry_at = time.monotonic() + delay
                logging.warning("failed to load %s version %d (attempt %d of %d), retrying in %.1fs: %s",
                                self.name, version, failure.count, self.options.max_num_load_retries + 1, delay, e)
                self._status[version] = (State.LOADING, failure.message)
            return False
        self._failures.pop(version, None)
        with self._lock:
            self._loaded[version] = _Loaded(servable)
            self._status[version] = (State.AVAILABLE, "")
        logging.info("serving %s version %d", self.name, version)
        return True

    def _retire(self, version: int):
        with self._lock:
            loaded = self._loaded.pop(version)
            loaded.retired = True
            self._status[version] = (State.UNLOADING, "")
            close_now = loaded.inflight == 0
        if close_now:
            self._unload(loaded)

    def _unload(self, loaded: _Loaded):
        loaded.servable.close()
        self._status[loaded.servable.version] = (State.END, "")

    def resolve(self, version: int | None = None, label: str | None = None) -> int:
        """The loaded version a request names (by number or label; the highest when neither)."""
        if label:
            if label not in self.config.labels:
                raise RequestError("NOT_FOUND", f"model {self.name!r} has no version label {label!r}; labels: "
                                   f"{sorted(self.config.labels)}")
            version = self.config.labels[label]
        if version:
            if version not in self._loaded:
                raise RequestError("NOT_FOUND", f"version {version} of model {self.name!r} is not available; "
                                   f"loaded versions: {self.loaded_versions}")
            return version
        if not self._loaded:
            raise RequestError("NOT_FOUND", f"no version of model {self.name!r} is loaded yet "
                               f"(looking in {self.config.base_path})")
        return self.current_version

    @contextlib.contextmanager
    def acquire(self, version: int | None = None, label: str | None = None):
        """Yields the servable for a request; the version stays loaded until the block exits."""
        with self._lock:
            loaded = self._loaded.get(self.resolve(version, label))
            if loaded is None:  # unloaded between resolve and here
                raise RequestError("UNAVAILABLE", f"version {version} of model {self.name!r} was just unloaded")
            loaded.inflight += 1
        try:
            yield loaded.servable
        finally:
            with self._lock:
                loaded.inflight -= 1
                close_now = loaded.retired and loaded.inflight == 0
            if close_now:
                self._unload(loaded)

    def status(self, version: int | None = None) -> list[tuple[int, int, str]]:
        """[(version, state, error message)] ascending, optionally for one version."""
        return sorted((v, s, m) for v, (s, m) in self._status.items() if version is None or v == version)

    def close(self):
        with self._lock:
            loaded, self._loaded = list(self._loaded.values()), {}
        for item in loaded:
            self._unload(item)


class ServerCore:
    """The served models by name; what gRPC and REST front-ends share."""

    def __init__(self, managers: list[ModelManager]):
        self.managers = {m.name: m for m in managers}

    def manager(self, name: str) -> ModelManager:
        if name not in self.managers:
            raise RequestError("NOT_FOUND", f"model {name!r} not found; this server serves {sorted(self.managers)}")
        return self.managers[name]

    @contextlib.contextmanager
    def acquire(self, name: str, version: int | None = None, label: str | None = None):
        with self.manager(name).acquire(version, label) as servable:
            yield servable

    def poll(self):
        for manager in self.managers.values():
            try:
                manager.poll()
            except Exception as e:  # keep polling the other models whatever happens
                logging.error("version poll of %s failed: %s", manager.name, e)

    def close(self):
        for manager in self.managers.values():
            manager.close()
