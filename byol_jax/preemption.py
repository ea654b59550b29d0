"""Stopping cleanly on SIGTERM (TPU / Spot preemption, `scancel`) or SIGINT.

While a `StopSignal` is active the first such signal only sets a flag; the
training loop finishes its current step, writes a checkpoint and raises
`Preempted`, and the entry point exits with `EXIT_CODE`. A second signal
stops at once (KeyboardInterrupt), for a person who does not want to wait.
"""

import signal
import threading
from types import FrameType

# EX_TEMPFAIL of sysexits.h: "try again later". Distinct from 0 (finished),
# 1 (crash) and 2 (bad input), so a job scheduler can requeue on it.
EXIT_CODE = 75

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """The run stopped on a signal after writing a checkpoint at `step`.

  `saved`, if given, replaces "after step <step> and saved a checkpoint" in
  the message (for work that keeps something other than a checkpoint).
  """

  def __init__(self, step: int, signal_name: str, saved: str = ''):
    saved = saved or f'after step {step} and saved a checkpoint'
    super().__init__(f'stopped on {signal_name} {saved}; run the same '
                     'command to resume')
    self.step = step


class StopSignal:
  """Context manager that turns SIGTERM / SIGINT into a polled flag.

  Handlers can only be installed from the main thread; elsewhere (e.g. a
  test calling the loop from a worker thread) the signals keep their
  previous behaviour and `requested` stays False.
  """

  def __init__(self):
    self.received: str | None = None
    self._previous = {}

  @property
  def requested(self) -> bool:
    return self.received is not None

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    del frame
    if self.requested:
      raise KeyboardInterrupt(f'second {signal.Signals(signum).name}')
    self.received = signal.Signals(signum).name

  def __enter__(self) -> 'StopSignal':
    if threading.current_thread() is threading.main_thread():
      for signum in SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()
