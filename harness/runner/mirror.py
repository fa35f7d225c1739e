"""A worker's copy of its study's trials, read once per claim instead of once per call.

Optuna reads every trial of the study several times a sweep trial: `ask` (for a WAITING
trial), the sampler (search space, then the observations), the pruner, `tell` (twice) and
the `Trial` itself; on an RDB storage each read is five to seven SQL statements, most of a
short trial. `MirroredStorage` wraps the study's storage: `sync` reads the trials once (a
worker calls it under the study's lock, where it decides what is due), every later read is
served from that copy, and every write goes to the storage first and is then applied to
the copy. What a worker sees between two syncs is the study as of its last claim plus its
own writes: with one worker that is the study itself (the same samples for the same seed);
with several, the trials the others finished meanwhile are seen at the next claim.

Only the public `BaseStorage` interface is used, so it wraps any storage Optuna has.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Container, Sequence
from datetime import datetime
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState


class MirroredStorage(optuna.storages.BaseStorage):
    """A storage whose trial reads come from the last `sync` (plus this process's writes)."""

    def __init__(self, backend: optuna.storages.BaseStorage) -> None:
        self.backend = backend
        self._lock = threading.RLock()  # the heartbeat thread writes too
        self._trials: dict[int, dict[int, FrozenTrial]] = {}  # study id -> trial number -> trial
        self._ids: dict[int, dict[int, int]] = {}  # study id -> trial number -> trial id
        self._where: dict[int, tuple[int, int]] = {}  # trial id -> (study id, number), synced studies

    # -- the copy ------------------------------------------------------------------------------
    def sync(self, study_id: int) -> list[FrozenTrial]:
        """Read the study's trials from the storage (one read); they, in number order."""
        trials = self.backend.get_all_trials(study_id, deepcopy=False)
        with self._lock:
            ids = self._ids.setdefault(study_id, {})
            for t in trials:
                if t.number not in ids:  # a dictionary look-up in Optuna's cache of an RDB storage
                    ids[t.number] = self.backend.get_trial_id_from_study_id_trial_number(study_id, t.number)
                    self._where[ids[t.number]] = (study_id, t.number)
            # the copy's trials are replaced, never changed in place: a reader holding one
            # (and the backend's own cache) never sees it change
            self._trials[study_id] = {t.number: t for t in trials}
        return trials

    def _update(self, trial_id: int, **changes: Any) -> None:
        with self._lock:
            where = self._where.get(trial_id)
            if where is None:
                return
            study_id, number = where
            trial = copy.copy(self._trials[study_id][number])
            for name, value in changes.items():
                setattr(trial, name, value)
            self._trials[study_id][number] = trial

    def _mirrored(self, trial_id: int) -> FrozenTrial | None:
        with self._lock:
            where = self._where.get(trial_id)
            return None if where is None else self._trials[where[0]].get(where[1])

    def _refetch(self, trial_id: int, study_id: int) -> None:
        trial = self.backend.get_trial(trial_id)
        with self._lock:
            if study_id in self._trials:
                self._trials[study_id][trial.number] = trial
                self._ids[study_id][trial.number] = trial_id
                self._where[trial_id] = (study_id, trial.number)

    # -- trials: reads ---------------------------------------------------------------------------
    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        with self._lock:
            mirrored = self._trials.get(study_id)
            if mirrored is not None:
                trials = sorted((t for t in mirrored.values() if states is None or t.state in states),
                                key=lambda t: t.number)
                return copy.deepcopy(trials) if deepcopy else trials
        return self.backend.get_all_trials(study_id, deepcopy=deepcopy, states=states)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        trial = self._mirrored(trial_id)
        return trial if trial is not None else self.backend.get_trial(trial_id)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        with self._lock:
            trial_id = self._ids.get(study_id, {}).get(trial_number)
        if trial_id is not None:
            return trial_id
        return self.backend.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    # -- trials: writes (the storage first, then the copy) ---------------------------------------
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = self.backend.create_new_trial(study_id, template_trial)
        if study_id in self._trials:  # its number and times are the storage's
            self._refetch(trial_id, study_id)
        return trial_id

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        self.backend.set_trial_param(trial_id, param_name, param_value_internal, distribution)
        trial = self._mirrored(trial_id)
        if trial is not None:
            self._update(trial_id,
                         params={**trial.params, param_name: distribution.to_external_repr(param_value_internal)},
                         distributions={**trial.distributions, param_name: distribution})

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        changed = self.backend.set_trial_state_values(trial_id, state, values)
        with self._lock:
            study_id = self._where.get(trial_id, (None, 0))[0]
        if changed and study_id is not None:
            if state == TrialState.RUNNING:  # a WAITING trial taken: its start time is the storage's
                self._refetch(trial_id, study_id)
            else:
                now = datetime.now()
                self._update(trial_id, state=state, values=None if values is None else [float(v) for v in values],
                             datetime_complete=now if state.is_finished() else None)
        return changed

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self.backend.set_trial_intermediate_value(trial_id, step, intermediate_value)
        trial = self._mirrored(trial_id)
        if trial is not None:
            self._update(trial_id, intermediate_values={**trial.intermediate_values, step: intermediate_value})

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.backend.set_trial_user_attr(trial_id, key, value)
        trial = self._mirrored(trial_id)
        if trial is not None:
            self._update(trial_id, user_attrs={**trial.user_attrs, key: value})

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.backend.set_trial_system_attr(trial_id, key, value)
        trial = self._mirrored(trial_id)
        if trial is not None:
            self._update(trial_id, system_attrs={**trial.system_attrs, key: value})

    # -- studies: the storage's own ----------------------------------------------------------------
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        return self.backend.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        with self._lock:
            self._trials.pop(study_id, None)
            for trial_id in self._ids.pop(study_id, {}).values():
                self._where.pop(trial_id, None)
        self.backend.delete_study(study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self.backend.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self.backend.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self.backend.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self.backend.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self.backend.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self.backend.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self.backend.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[Any]:
        return self.backend.get_all_studies()

    def remove_session(self) -> None:
        self.backend.remove_session()
