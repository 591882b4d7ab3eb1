"""The model store: which versions are loaded and served, by policy, and how requests get one.

The layout is TensorFlow Serving's: ``<models_dir>/<version>/`` holding a SavedModel with the
``serving_default`` signature and a ``metrics.json`` (:mod:`app.serving.model_dir` reads the
directory). Which versions are loaded and which one answers by default is the
:class:`~app.serving.policy.VersionPolicy`'s decision (``latest`` behind a promotion gate,
``specific``, labels). Before a version becomes routable it is loaded, warmed and checked on the
built-in probe set (:func:`app.serving.loaded.load_version`); a version that fails is remembered
with its reason, counted, never served, and retried only when its content changes (relative
paths, sizes and modification times of its files).

Requests take a :class:`~app.serving.loaded.LoadedModel` once, when they start
(:attr:`ModelStore.current` or :meth:`ModelStore.get`), and keep it; a refresh replaces the
store's state object, never a model, so a request in flight finishes on the version it started
with.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from app.core.errors import DomainError
from app.serving.loaded import LoadedModel, load_version
from app.serving.model_dir import (
    IgnoredEntry,
    content_fingerprint,
    file_kind,
    non_regular_files,
    scan_versions,
    scrub_paths,
)
from app.serving.models_config import ConfigError, policy_from_config, read_config_file
from app.serving.policy import VersionPolicy
from app.serving.report import FILE_NAME as REPORT_FILE
from app.serving.report import ModelReport, RealDigitsFigures, read_report
from app.serving.runtime import Loader, ModelLoadError, first_line
from app.serving.runtime import load as load_predictor

__all__ = [
    "FailedVersion",
    "HeldVersion",
    "ModelNotReadyError",
    "ModelStore",
    "StoreObserver",
    "StoreStatus",
    "VersionNotFoundError",
]

logger = logging.getLogger(__name__)

#: What says that a file changed: inode, mode, modification time, size.
_FileKey = tuple[int, int, int, int]


class VersionNotFoundError(DomainError):
    """A request named a version or label that is not loaded."""

    code = "version_not_found"


class ModelNotReadyError(DomainError):
    """No model version is loaded yet."""

    code = "model_not_ready"


@dataclass(frozen=True)
class FailedVersion:
    """A version that could not be served, and why."""

    version: int
    reason: str
    failed_at: datetime
    fingerprint: str
    """The content it failed with: a change to any file inside earns another try."""
    attempts: int = 1


@dataclass(frozen=True)
class HeldVersion:
    """A newer version the promotion gate keeps from being served, and why."""

    version: int
    reason: str
    held_at: datetime
    test_accuracy: float | None
    real_digits: RealDigitsFigures | None = None
    """Its figures on held-out labelled real digits, when its metrics.json has them."""


# --- the store -------------------------------------------------------------------------------


class StoreObserver(Protocol):
    """Told about what the store does (telemetry implements it)."""

    def load_failed(self, version: int, reason: str) -> None:
        """A version failed to load or failed its probe check."""

    def version_held(self, version: int, reason: str) -> None:
        """A version was held by the promotion gate (once per hold)."""

    def serving_changed(self, status: StoreStatus) -> None:
        """The served, held or failed versions changed."""


@dataclass(frozen=True)
class _State:
    models: Mapping[int, LoadedModel] = field(default_factory=dict)
    default: LoadedModel | None = None
    labels: Mapping[str, int] = field(default_factory=dict)
    """Labels whose version is loaded."""


@dataclass(frozen=True)
class StoreStatus:
    """A consistent picture of the store, for /model and Prometheus."""

    policy: VersionPolicy
    default: LoadedModel | None
    served: list[LoadedModel]
    """Loaded and routable versions, newest first."""
    labels: dict[str, int]
    """Labels whose version is loaded, and that version."""
    held: list[HeldVersion]
    failed: list[FailedVersion]
    ignored: list[IgnoredEntry]
    on_disk: list[int]
    """Valid version directories, newest first."""
    last_checked: datetime | None


class ModelStore:
    """The served model versions and the versions on disk; thread-safe.

    :meth:`refresh` brings the store up to date with the directory (the lifespan calls it once,
    the poller periodically). ``on_change`` is called with the new default model after every
    swap; ``observer`` hears about failures, holds and every change of the served set.
    """

    def __init__(
        self,
        models_dir: Path,
        on_change: Callable[[LoadedModel], None] | None = None,
        loader: Loader = load_predictor,
        *,
        policy: VersionPolicy | None = None,
        probe_min_accuracy: float = 0.0,
        observer: StoreObserver | None = None,
        policy_file: Path | None = None,
    ) -> None:
        self.models_dir = models_dir
        self.policy = policy or VersionPolicy()
        self._base_policy = self.policy
        self.policy_file = policy_file
        self.policy_source = "settings"
        """Where :attr:`policy` comes from: 'settings' or the policy file's name."""
        self.policy_error: str | None = None
        """Why the policy file could not be used (the previous policy stays), or None."""
        self._policy_key: _FileKey | None = None
        self.probe_min_accuracy = probe_min_accuracy
        self._on_change = on_change
        self._observer = observer
        self._loader = loader
        self._state = _State()
        self._failed: dict[int, FailedVersion] = {}
        self._held: dict[int, HeldVersion] = {}
        # Held versions that loaded and passed the probe, by the content they passed with.
        self._verified: dict[int, str] = {}
        self._ignored: list[IgnoredEntry] = []
        self._on_disk: list[int] = []
        self._reports: dict[int, tuple[_FileKey | None, ModelReport | None]] = {}
        self._logged_ignored: set[str] = set()
        self._last_status_key: tuple[object, ...] | None = None
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.last_checked: datetime | None = None
        self._reported_empty = False
        self._polling = False

    # --- reading (any thread, no lock: the state is replaced whole) --------------------------

    @property
    def current(self) -> LoadedModel | None:
        """The model answering requests that name no version (None until one is loaded)."""
        return self._state.default

    def get(self, version: int | None = None, label: str | None = None) -> LoadedModel:
        """The loaded model for a version or a label, or the default one when both are None.

        Raises:
            ModelNotReadyError: when no version is loaded at all.
            VersionNotFoundError: when the version or label is not loaded (or they disagree).
        """
        state = self._state
        if not state.models:
            raise ModelNotReadyError(
                f"No model is loaded yet: no servable version in {self.models_dir.name}/. "
                "GET /model lists the versions found and why any failed.",
            )
        if version is None and label is None:
            if state.default is None:  # pragma: no cover - models without a default
                raise ModelNotReadyError("No default model version is being served.")
            return state.default
        served = sorted(state.models)
        details: dict[str, Any] = {"served_versions": served, "labels": dict(state.labels)}
        if label is not None:
            labelled = state.labels.get(label)
            shown = label if len(label) <= 40 else label[:37] + "..."
            if labelled is None:
                configured = self.policy.labels.get(label)
                why = (
                    f"Label '{shown}' names version {configured}, which is not loaded"
                    if configured is not None
                    else f"There is no label '{shown}'"
                )
                raise VersionNotFoundError(f"{why}; see GET /model.", details)
            if version is not None and version != labelled:
                raise VersionNotFoundError(
                    f"Label '{shown}' names version {labelled}, not {version}: name one of them.",
                    details,
                )
            version = labelled
        assert version is not None
        model = state.models.get(version)
        if model is None:
            raise VersionNotFoundError(
                f"Model version {version} is not served (served: "
                f"{', '.join(map(str, served))}); see GET /model for held and failed versions.",
                details,
            )
        return model

    def served(self) -> list[LoadedModel]:
        """The loaded, routable versions, newest first."""
        return sorted(self._state.models.values(), key=lambda m: m.version, reverse=True)

    def labels(self) -> dict[str, int]:
        """Labels whose version is loaded, and that version."""
        return dict(self._state.labels)

    @property
    def failed(self) -> list[FailedVersion]:
        """Versions that failed to load or failed the probe, newest first."""
        return sorted(self._failed.values(), key=lambda f: f.version, reverse=True)

    @property
    def held(self) -> list[HeldVersion]:
        """Versions the promotion gate holds, newest first."""
        return sorted(self._held.values(), key=lambda h: h.version, reverse=True)

    def status(self) -> StoreStatus:
        """Everything /model shows, from one moment."""
        state = self._state
        return StoreStatus(
            policy=self.policy,
            default=state.default,
            served=sorted(state.models.values(), key=lambda m: m.version, reverse=True),
            labels=dict(state.labels),
            held=self.held,
            failed=self.failed,
            ignored=list(self._ignored),
            on_disk=list(self._on_disk)[::-1],
            last_checked=self.last_checked,
        )

    # --- refreshing ----------------------------------------------------------------------------

    def refresh(self) -> LoadedModel | None:
        """Bring the loaded versions in line with the directory and the policy.

        Returns the default model afterwards. Whatever goes wrong with a new version, the
        versions already served keep serving; should the default version's directory vanish,
        the policy's next choice takes over (a rollback).
        """
        with self._refresh_lock:
            self.last_checked = datetime.now(UTC)
            self._reload_policy()
            versions, ignored = scan_versions(self.models_dir)
            self._note_ignored(ignored)
            self._report_empty(versions)
            on_disk = set(versions)
            self._on_disk = versions
            self._failed = {v: f for v, f in self._failed.items() if v in on_disk}
            self._reports = {v: r for v, r in self._reports.items() if v in on_disk}
            self._verified = {v: f for v, f in self._verified.items() if v in on_disk}
            previous = self._state
            loaded = {v: m for v, m in previous.models.items() if v in on_disk}
            fingerprints: dict[int, str] = {}

            def fingerprint(version: int) -> str:
                if version not in fingerprints:
                    fingerprints[version] = content_fingerprint(self.models_dir / str(version))
                return fingerprints[version]

            def known_bad(version: int) -> bool:
                failed = self._failed.get(version)
                return failed is not None and failed.fingerprint == fingerprint(version)

            # Each pass either loads what the plan wants or records a failure that changes
            # the plan; there are at most as many failures as versions.
            for _ in range(len(versions) + 1):
                wanted, default_version, held = self._plan(versions, loaded, known_bad)
                failed_now = False
                for version in sorted(wanted, reverse=True):
                    if version in loaded or known_bad(version):
                        continue
                    model = self._try_load(version, fingerprint(version))
                    if model is None:
                        failed_now = True
                    else:
                        loaded[version] = model
                # A held version newer than the served one is still loaded and probed once
                # (per content), so that a broken one is reported as failed, not as held.
                for version in sorted(held, reverse=True):
                    if default_version is not None and version < default_version:
                        continue
                    if self._verified.get(version) == fingerprint(version):
                        continue
                    if self._try_load(version, fingerprint(version)) is None:
                        failed_now = True
                    else:
                        self._verified[version] = fingerprint(version)
                if not failed_now:
                    break
            self._update_held(held)
            self._publish(previous, loaded, wanted, default_version)
            return self._state.default

    def _reload_policy(self) -> None:
        """Read the policy file again when it changed; keep the previous policy if it is bad.

        Whatever the file holds (a syntax error, nesting or numbers past the parser's limits, a
        FIFO or a device instead of a file), the outcome is a reason in :attr:`policy_error`,
        logged once per change of the reason, and the versions are still scanned and loaded
        with the policy in force: nothing in this file may stop a poll.
        """
        path = self.policy_file
        if path is None:
            return
        unexpected: Exception | None = None
        try:
            found = os.stat(path)
            # The inode and mode too: a file replaced whole (renamed over, or by a FIFO) is read
            # again even with the same size and modification time.
            key: _FileKey | None = (found.st_ino, found.st_mode, found.st_mtime_ns, found.st_size)
        except OSError as exc:
            key, problem = None, f"{path.name} cannot be read ({type(exc).__name__})"
        if key is not None and key == self._policy_key:
            return
        if key is not None:
            try:
                policy = policy_from_config(read_config_file(path), self._base_policy)
            except ConfigError as exc:
                problem = f"{path.name}: {exc}"
            except Exception as exc:  # a bug of the parser: a reason, with its traceback once
                unexpected = exc
                problem = f"{path.name}: cannot be used ({type(exc).__name__})"
            else:
                self._policy_key = key
                if policy != self.policy or self.policy_error is not None:
                    logger.info("version policy from %s: %s", path.name, policy.describe())
                self.policy, self.policy_error = policy, None
                self.policy_source = path.name
                return
        self._policy_key = key
        if problem != self.policy_error:
            logger.error(
                "version policy file not used, keeping %s: %s",
                self.policy.describe(),
                problem,
                exc_info=unexpected,
            )
        self.policy_error = problem

    def _plan(
        self,
        versions: list[int],
        loaded: Mapping[int, LoadedModel],
        known_bad: Callable[[int], bool],
    ) -> tuple[set[int], int | None, dict[int, str]]:
        """(versions to load, the default version, held versions with reasons)."""
        policy = self.policy
        on_disk = set(versions)

        def usable(version: int) -> bool:
            return version in on_disk and (version in loaded or not known_bad(version))

        held: dict[int, str] = {}
        wanted: set[int] = set()
        default: int | None = None
        if policy.kind == "latest":
            accepted, held = policy.gate.promote(filter(usable, versions), self._report)
            wanted.update(accepted[-policy.latest_versions :])
            default = accepted[-1] if accepted else None
        else:
            pinned = [v for v in policy.versions if usable(v)]
            wanted.update(pinned)
            default = max(pinned, default=None)
        for version in policy.labels.values():
            if usable(version):
                wanted.add(version)
        if policy.default_label is not None:
            labelled = policy.labels[policy.default_label]
            if usable(labelled):
                default = labelled
        return wanted, default, held

    def _report(self, version: int) -> ModelReport | None:
        """The version's metrics.json, read again only when the file changes.

        Read at every poll that finds it changed, so only a regular file is read: a FIFO or a
        device there would block the poller for good. Anything else counts as no report.
        """
        path = self.models_dir / str(version)
        try:
            found = (path / REPORT_FILE).stat()
            key: _FileKey | None = (found.st_ino, found.st_mode, found.st_mtime_ns, found.st_size)
        except OSError:
            key = None
        cached = self._reports.get(version)
        if cached is None or cached[0] != key:
            report: ModelReport | None = None
            if key is not None and not stat.S_ISREG(key[1]):
                logger.warning(
                    "model %d: %s is %s, not a regular file; not read",
                    version,
                    REPORT_FILE,
                    file_kind(key[1]),
                )
            elif key is not None:
                report = read_report(path)
            cached = (key, report)
            self._reports[version] = cached
        return cached[1]

    def _try_load(self, version: int, fingerprint: str) -> LoadedModel | None:
        path = self.models_dir / str(version)
        try:
            # Loading reads every file of the version: one that is not a regular file (a FIFO
            # never written to, a device) would block it, and the poller with it, for good.
            special = non_regular_files(path)
            if special:
                raise ModelLoadError(
                    f"holds what is not a regular file, not read: {', '.join(special)}"
                )
            model = load_version(
                path, version, loader=self._loader, probe_min_accuracy=self.probe_min_accuracy
            )
        except Exception as exc:
            reason = scrub_paths(
                str(exc) if isinstance(exc, ModelLoadError) else first_line(exc), path
            )
            previous = self._failed.get(version)
            attempts = previous.attempts + 1 if previous is not None else 1
            self._failed[version] = FailedVersion(
                version, reason, datetime.now(UTC), fingerprint, attempts
            )
            logger.error("model version %d not served: %s", version, reason)
            if self._observer is not None:
                self._observer.load_failed(version, reason)
            return None
        self._failed.pop(version, None)
        probe = model.probe
        logger.info(
            "model version %d loaded, warmed and probed in %.2f s (probe digits read: %s)",
            version,
            model.load_seconds,
            f"{probe.accuracy:.0%}" if probe is not None else "n/a",
        )
        return model

    def _update_held(self, held: Mapping[int, str]) -> None:
        now = datetime.now(UTC)
        updated: dict[int, HeldVersion] = {}
        for version, reason in held.items():
            previous = self._held.get(version)
            if previous is not None and previous.reason == reason:
                updated[version] = previous
                continue
            report = self._report(version)
            updated[version] = HeldVersion(
                version,
                reason,
                now,
                report.test_accuracy if report is not None else None,
                report.real_digits if report is not None else None,
            )
            logger.warning("model version %d held by the promotion gate: %s", version, reason)
            if self._observer is not None:
                self._observer.version_held(version, reason)
        self._held = updated

    def _publish(
        self,
        previous: _State,
        loaded: Mapping[int, LoadedModel],
        wanted: set[int],
        default_version: int | None,
    ) -> None:
        models = {v: m for v, m in loaded.items() if v in wanted}
        default = models.get(default_version) if default_version is not None else None
        if default is None and models:
            default = models[max(models)]
        if default is None and previous.default is not None:
            # Nothing else is servable: keep answering with what was served.
            default = previous.default
            models[default.version] = default
        labels = {
            label: version for label, version in self.policy.labels.items() if version in models
        }
        state = _State(models=models, default=default, labels=labels)
        changed = (
            dict(previous.models) != models
            or previous.default is not default
            or dict(previous.labels) != labels
        )
        self._state = state
        for version in sorted(set(previous.models) - set(models)):
            logger.info("model version %d unloaded (no longer named by the policy)", version)
        if default is not None and default is not previous.default:
            logger.info(
                "serving model version %d from %s by default (loaded in %.2f s%s)",
                default.version,
                default.path.name,
                default.load_seconds,
                f"; was version {previous.default.version}" if previous.default else "",
            )
            if self._on_change is not None:
                self._on_change(default)
        if self._observer is not None and (changed or self._status_dirty()):
            self._observer.serving_changed(self.status())

    def _status_dirty(self) -> bool:
        key = (
            tuple(sorted(self._held)),
            tuple(sorted((f.version, f.attempts) for f in self._failed.values())),
            tuple(e.name for e in self._ignored),
        )
        dirty = key != self._last_status_key
        self._last_status_key = key
        return dirty

    def _note_ignored(self, ignored: list[IgnoredEntry]) -> None:
        self._ignored = ignored
        for entry in ignored:
            if entry.name not in self._logged_ignored and len(self._logged_ignored) < 1000:
                self._logged_ignored.add(entry.name)
                logger.warning("ignoring %r in the models directory: %s", entry.name, entry.reason)

    def _report_empty(self, versions: list[int]) -> None:
        empty = not versions and self._state.default is None
        if empty and not self._reported_empty:
            # Once, not at every poll: the state is what matters, not its repetition.
            logger.error(
                "not ready: no model version in %s (expected integer-named SavedModel "
                "directories such as %s/1)%s",
                self.models_dir.resolve(),
                self.models_dir,
                "; still looking" if self._polling else "",
            )
        self._reported_empty = empty

    # --- polling -------------------------------------------------------------------------------

    def start_polling(self, interval_seconds: float) -> None:
        """Check the directory every ``interval_seconds`` in a background thread."""
        if interval_seconds <= 0 or self._poller is not None:
            return
        self._polling = True
        self._stop.clear()
        self._poller = threading.Thread(
            target=self._poll, args=(interval_seconds,), name="model-poller", daemon=True
        )
        self._poller.start()

    def stop_polling(self, timeout: float = 30.0) -> None:
        """Stop the poller, waiting for a load in progress to finish."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout)
            self._poller = None

    def _poll(self, interval: float) -> None:
        failure: str | None = None
        repeats = 0
        while not self._stop.wait(interval):
            try:
                self.refresh()
            except Exception as exc:
                # The poller must outlive any surprise; the next round tries again. The same
                # failure at every poll is logged (with its traceback) once, not every poll.
                now = f"{type(exc).__name__}: {exc}"
                if now != failure:
                    logger.exception("model poll failed")
                    failure, repeats = now, 0
                else:
                    repeats += 1
                continue
            if failure is not None:
                logger.info("model poll works again (after %d more failures)", repeats)
                failure = None
