"""The progress line's rates and ETA, on a fake clock."""

from byol_jax import progress


class _Clock:
  """A clock that moves only when told to."""

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_rates_leave_out_the_first_step_which_compiles():
  clock = _Clock()
  meter = progress.Progress(total_steps=101, images_per_step=8, start_step=0,
                            clock=clock)
  clock.now += 30.0  # step 1: compiling
  meter.first_step_done(1)
  clock.now += 10.0  # steps 2 .. 11, one per second
  assert meter.report(11) == 'step 11/101 | 1.00 steps/s | 8 img/s | ETA 1m30s'
  clock.now += 5.0  # steps 12 .. 21, two per second
  assert meter.report(21, 'loss 1.0') == (
      'step 21/101 | 2.00 steps/s | 16 img/s | ETA 40s | loss 1.0')


def test_a_report_of_the_first_step_itself_has_no_rate_yet():
  clock = _Clock()
  meter = progress.Progress(total_steps=10, images_per_step=4, start_step=5,
                            clock=clock)
  clock.now += 20.0  # step 6, the first after resuming: compiling
  meter.first_step_done(6)
  assert meter.report(6) == 'step 6/10 | ? steps/s | ? img/s | ETA ?'
  clock.now += 0.5
  assert meter.report(7) == 'step 7/10 | 2.00 steps/s | 8 img/s | ETA 2s'


def test_without_images_per_step_the_images_part_is_left_out():
  clock = _Clock()
  meter = progress.Progress(total_steps=3, images_per_step=0, start_step=0,
                            clock=clock)
  clock.now += 4.0  # no first_step_done: measured from construction
  assert meter.report(2) == 'step 2/3 | 0.50 steps/s | ETA 2s'


def test_durations_read_as_hours_minutes_seconds():
  assert progress.format_duration(12345.6) == '3h25m46s'
  assert progress.format_duration(75) == '1m15s'
  assert progress.format_duration(9.4) == '9s'
