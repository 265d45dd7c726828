"""SIGTERM / SIGINT -> a flag the training loop polls, agreed on by every host.

Schedulers (SLURM, Kubernetes, TPU maintenance events) send SIGTERM some seconds before they
kill a job. The handler only sets a flag: the loop finishes its current step, sees
``should_stop(step)``, saves a checkpoint with ``force=True`` and the command exits with
:data:`EXIT_PREEMPTED` (75, ``EX_TEMPFAIL``: "stopped early, run me again"; ``launch/slurm.sbatch``
requeues the job on it); the rerun of the same command resumes from the checkpoint. A second
SIGINT (Ctrl-C twice) raises ``KeyboardInterrupt`` at once, so an interactive run that hangs can
still be killed.

Multi-host: hosts may receive the signal at different steps, and every host must leave the loop
at the *same* step (the checkpoint save is a collective). :meth:`PreemptionHandler.should_stop`
therefore all-gathers the local flags with ``multihost_utils.process_allgather`` when
``jax.process_count() > 1``: if any host is stopping, all stop. Every host must call it with the
same ``step`` values; with ``sync_every = k`` the all-gather only runs on steps divisible by k
(the answer on the other steps is False everywhere), so a stop is agreed at the next multiple of k.
A stop agreed through another host also reaches a handler installed around this one (`blip-jax
pipeline`'s), as a signal does.

Install after :func:`blip_jax.train.distributed.maybe_initialize_distributed`: jax's distributed
runtime installs its own SIGTERM notifier when it initialises, and the last handler installed wins.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

# Exit status of a command stopped early by SIGTERM / SIGINT after saving its progress (sysexits.h
# EX_TEMPFAIL): not finished, rerun the same command to resume. 0 means finished.
EXIT_PREEMPTED = 75


class PreemptionHandler:
    """Signal-driven stop flag with multi-host agreement.

    Args:
        signals: signals that request a stop (default SIGTERM and SIGINT).
        sync_every: all-gather the flags across hosts every this many steps (multi-host only).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT), sync_every: int = 1):
        self.signals = tuple(signals)
        self.sync_every = max(1, int(sync_every))
        self._event = threading.Event()
        self._reason: str | None = None
        self._previous: dict[int, object] = {}
        self._agreed = False

    # ---- installation --------------------------------------------------------------------

    def install(self) -> PreemptionHandler:
        """Install the handlers (must run in the main thread); returns self."""
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def uninstall(self) -> None:
        """Restore the handlers that were installed before :meth:`install`."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __enter__(self) -> PreemptionHandler:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self._event.is_set():
            raise KeyboardInterrupt(f"second {name}: stopping immediately")
        # Signal handlers run between bytecodes of the main thread: set a flag, nothing else.
        self.request_stop(f"received {name}")
        # A handler installed around this one (`blip-jax pipeline` around a train stage) hears it too.
        self._tell_outer(f"received {name}")

    def _tell_outer(self, reason: str) -> None:
        for previous in self._previous.values():
            outer = getattr(previous, "__self__", None)
            if isinstance(outer, PreemptionHandler) and outer is not self:
                outer.request_stop(reason)
                return

    # ---- the flag ------------------------------------------------------------------------

    def request_stop(self, reason: str = "requested") -> None:
        """Ask this host to stop (signals call this; the loop may too, e.g. a time budget)."""
        if not self._event.is_set():
            self._reason = reason
            self._event.set()
            log.warning("preemption: %s; saving a checkpoint and stopping after this step", reason)

    @property
    def stop_requested(self) -> bool:
        """This host's flag, without asking the other hosts."""
        return self._event.is_set()

    @property
    def reason(self) -> str | None:
        """Why this host stops ("received SIGTERM", ...), or "another host ..." after agreement."""
        return self._reason

    def should_stop(self, step: int | None = None) -> bool:
        """Whether the loop should save and exit now; the same answer on every host.

        Args:
            step: the current step (used for ``sync_every``); None syncs on every call.
        """
        if self._agreed:
            return True
        if jax.process_count() == 1:
            return self._event.is_set()
        if step is not None and step % self.sync_every != 0:
            return False
        flags = np.asarray(multihost_utils.process_allgather(np.int32(self._event.is_set()), tiled=False))
        if flags.any():
            if not self._event.is_set():
                hosts = [int(i) for i in np.flatnonzero(flags)]
                self._reason = f"another host stopped (processes {hosts})"
            self._agreed = True
            self._tell_outer(self._reason)
            return True
        return False


__all__ = ["EXIT_PREEMPTED", "PreemptionHandler"]
