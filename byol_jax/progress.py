"""A one-line progress report for long loops: step, steps/s, images/s, ETA."""

import time


def format_duration(seconds: float) -> str:
  """12345.6 -> '3h25m45s'; 75 -> '1m15s'."""
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

  The first interval after construction includes compilation; rates use the
  interval since the previous report, so they settle after one report.
  """

  def __init__(self, total_steps: int, images_per_step: int, start_step: int):
    self._total = total_steps
    self._images_per_step = images_per_step
    self._last_step = start_step
    self._last_time = time.monotonic()

  def report(self, step: int, extra: str = '') -> str:
    """Returns e.g. 'step 120/2000 | 2.1 steps/s | 540 img/s | ETA 14m55s'.

    The images/s part is left out when `images_per_step` is 0.
    """
    now = time.monotonic()
    steps = step - self._last_step
    elapsed = max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    rate = steps / elapsed
    eta = (self._total - step) / rate if rate > 0 else float('inf')
    eta_text = format_duration(eta) if eta != float('inf') else '?'
    line = f'step {step}/{self._total} | {rate:.2f} steps/s | '
    if self._images_per_step:
      line += f'{rate * self._images_per_step:.0f} img/s | '
    line += f'ETA {eta_text}'
    return f'{line} | {extra}' if extra else line
