"""SIGTERM / SIGINT become a polled flag while a StopSignal is active."""

import os
import signal
import threading

import pytest

from byol_jax import preemption


@pytest.mark.parametrize('signum', preemption.SIGNALS)
def test_first_signal_sets_the_flag_second_stops_at_once(signum):
  before = signal.getsignal(signum)
  with preemption.StopSignal() as stop:
    assert not stop.requested
    os.kill(os.getpid(), signum)
    assert stop.requested and stop.received == signal.Signals(signum).name
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signum)
  assert signal.getsignal(signum) is before


def test_outside_the_main_thread_signals_are_left_alone():
  seen = {}

  def enter():
    with preemption.StopSignal() as stop:
      seen['handler'] = signal.getsignal(signal.SIGTERM)
      seen['requested'] = stop.requested

  before = signal.getsignal(signal.SIGTERM)
  thread = threading.Thread(target=enter)
  thread.start()
  thread.join()
  assert seen == {'handler': before, 'requested': False}


def test_preempted_names_the_step_and_how_to_resume():
  error = preemption.Preempted(41, 'SIGTERM')
  assert error.step == 41
  assert str(error) == ('stopped on SIGTERM after step 41 and saved a '
                        'checkpoint; run the same command to resume')
