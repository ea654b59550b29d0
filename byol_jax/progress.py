"""A one-line progress report for long loops: step, steps/s, images/s, ETA."""

import time
from typing import Callable


def format_duration(seconds: float) -> str:
  """12345.6 -> '3h25m46s'; 75 -> '1m15s'."""
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m{seconds:02d}s'
  if minutes:
    return f'{minutes}m{seconds:02d}s'
  return f'{seconds}s'


class Progress:
  """Measures throughput between calls to `report` and estimates the ETA.

  The first step of a loop mostly compiles (and waits for the first batch):
  a loop calls `first_step_done` after it, so that the first report's rate
  counts only the steps since. Later reports use the interval since the
  previous report.
  """

  def __init__(self, total_steps: int, images_per_step: int, start_step: int,
               clock: Callable[[], float] = time.monotonic):
    self._total = total_steps
    self._images_per_step = images_per_step
    self._clock = clock
    self._last_step = start_step
    self._last_time = clock()

  def first_step_done(self, step: int) -> None:
    """Leaves the steps up to `step` (the first, compiling one) out of rates."""
    self._last_step, self._last_time = step, self._clock()

  def report(self, step: int, extra: str = '') -> str:
    """Returns e.g. 'step 120/2000 | 2.1 steps/s | 540 img/s | ETA 14m55s'.

    The images/s part is left out when `images_per_step` is 0. Rates and
    ETA are '?' when no step ran since the last measurement (a report of
    the first step itself).
    """
    now = self._clock()
    steps = step - self._last_step
    elapsed = max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    if steps > 0:
      rate = steps / elapsed
      rate_text = f'{rate:.2f}'
      images_text = f'{rate * self._images_per_step:.0f}'
      eta_text = format_duration((self._total - step) / rate)
    else:  # nothing ran since the last measurement
      rate_text = images_text = eta_text = '?'
    line = f'step {step}/{self._total} | {rate_text} steps/s | '
    if self._images_per_step:
      line += f'{images_text} img/s | '
    line += f'ETA {eta_text}'
    return f'{line} | {extra}' if extra else line
