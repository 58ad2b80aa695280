"""Lost processes in a multi-process run: every process beats a heartbeat in the coordination
service's key-value store; process 0 watches everybody's, the others watch process 0's. When a
process stops beating for ``peer_timeout_secs`` (killed, its host gone) the watcher ends its own
process with one line naming the lost one, and process 0 publishes the verdict so that every other
process does the same. Without this a survivor waits in a collective or in JAX's shutdown barrier
until JAX's own heartbeat timeout, and then aborts with a page of C++ logs.

A process that stops on an error first says so ("leaving") and waits for the verdict: if the error
came from a lost process (a failed collective, a checkpoint barrier), the message names that one;
if every process stops alike (the NaN guard), they all leave at once.

If process 0 itself dies, the coordination service dies with it and JAX's runtime ends every
other process at once (non-zero, "the JAX distributed service detected fatal errors ...
coordination_service ... Socket closed"); jaxvlm names the coordinator in its start-up line.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time

import jax

LOST_PEER_EXIT_CODE = 1
_generations = itertools.count()  # every process creates its watches in the same order: one key space each
_DONE, _LEAVING, _LOST = "done", "leaving", "lost: "


class PeerWatch:
    """Started by the training loop of a multi-process run: ``leave()`` when this process stops on
    an error, ``stop()`` when it is done with the run either way."""

    def __init__(self, timeout: float):
        from jax._src import distributed  # the coordination service client; JAX has no public accessor

        self._client = distributed.global_state.client
        self._me, self._count = jax.process_index(), jax.process_count()
        self._timeout = timeout
        self._interval = min(1.0, timeout / 10)
        self._keys = f"jaxvlm/heartbeat/{next(_generations)}/"
        self._leaving = False
        self._settled = threading.Event()  # while leaving: the watched processes have left too
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jaxvlm-peer-watch", daemon=True)
        self._thread.start()

    def leave(self) -> None:
        """This process stops on an error: says so, then waits (at most the timeout) until the watched
        processes have stopped too; a lost one ends this process with its name instead."""
        self._leaving = True
        self._publish(_LEAVING)
        self._settled.wait(self._timeout + 3 * self._interval)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
        self._publish(_DONE)

    def _publish(self, value: str) -> None:
        try:
            self._client.key_value_set(self._key(self._me), value, allow_overwrite=True)
        except Exception:  # noqa: BLE001 - the coordinator is gone: nobody is left to tell
            pass

    def _run(self) -> None:
        last_seen: dict[int, tuple[str | None, float]] = {}
        for beat in itertools.count():
            if self._stopped.wait(self._interval):
                return
            try:
                if not self._leaving:
                    self._client.key_value_set(self._key(self._me), str(beat), allow_overwrite=True)
                beats = self._beats()
            except Exception as e:  # noqa: BLE001
                self._end(
                    f"process 0 of {self._count} (the coordinator): it cannot be reached "
                    f"({' '.join(str(e).split())[:120]})"
                )
            if beats.get(0, "").startswith(_LOST):  # process 0's verdict
                self._end(beats[0][len(_LOST) :])
            now, watched, left = time.monotonic(), range(1, self._count) if self._me == 0 else (0,), 0
            for peer in watched:
                value = beats.get(peer)
                if value in (_DONE, _LEAVING):
                    left += 1
                    continue
                seen = last_seen.get(peer)
                if seen is None or seen[0] != value:
                    last_seen[peer] = (value, now)
                elif now - seen[1] > self._timeout:
                    self._lose(peer)
            if self._leaving and left == len(watched):
                self._settled.set()

    def _key(self, process: int) -> str:
        return f"{self._keys}{process}"

    def _beats(self) -> dict[int, str]:
        """Process 0 reads every heartbeat; the others read process 0's."""
        if self._me == 0:
            return {int(key[len(self._keys) :]): value for key, value in self._client.key_value_dir_get(self._keys)}
        try:
            return {0: self._client.key_value_try_get(self._key(0))}
        except Exception as e:  # noqa: BLE001
            if "NOT_FOUND" in str(e):  # process 0 has not beaten yet
                return {}
            raise

    def _lose(self, peer: int) -> None:
        what = f"process {peer} of {self._count}: no heartbeat for {self._timeout:g} s"
        if self._me == 0:
            self._publish(_LOST + what)
        self._end(what)

    def _end(self, what: str) -> None:
        if self._stopped.is_set():
            return
        sys.stderr.write(
            f"jaxvlm: training stopped: lost {what}; run the job again to resume from the newest checkpoint\n"
        )
        sys.stderr.flush()
        os._exit(LOST_PEER_EXIT_CODE)
