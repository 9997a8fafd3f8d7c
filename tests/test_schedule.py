"""The training loop's schedule on its own: which steps log, sample, flush and checkpoint."""

from __future__ import annotations

from types import SimpleNamespace

from ganforge.engine.schedule import Schedule


def steps_where(schedule: Schedule, what: str, stop_at: int | None = None) -> list[int]:
    out = []
    for step in range(1, schedule.steps + 1):
        due = schedule.at(step, stopping=step == stop_at)
        if getattr(due, what):
            out.append(step)
        if due.last:
            break
    return out


def test_every_kind_of_event_at_its_interval_and_all_at_the_end():
    s = Schedule(steps=23, log_every=5, sample_every=10, checkpoint_every=8)
    assert steps_where(s, "log") == [5, 10, 15, 20, 23]
    assert steps_where(s, "sample") == [10, 20, 23]
    assert steps_where(s, "checkpoint") == [8, 16, 23]
    assert steps_where(s, "flush") == [8, 10, 16, 20, 23]  # a grid or a checkpoint
    assert steps_where(s, "last") == [23]


def test_stopping_early_makes_that_step_the_last_with_everything_due():
    s = Schedule(steps=1000, log_every=10, sample_every=250, checkpoint_every=500)
    due = s.at(37, stopping=True)
    assert due.last and due.log and due.sample and due.flush and due.checkpoint
    assert steps_where(s, "checkpoint", stop_at=37) == [37]
    plain = s.at(37)
    assert not (plain.last or plain.log or plain.sample or plain.flush or plain.checkpoint)


def test_from_params_reads_the_train_section_and_the_defaults_line_up():
    from ganforge.config import Params

    tp = Params().train
    s = Schedule.from_params(tp)
    assert (s.steps, s.log_every, s.sample_every, s.checkpoint_every) == (
        tp.steps, tp.log_every, tp.sample_every, tp.checkpoint_every,
    )  # fmt: skip
    assert steps_where(s, "checkpoint")[-1] == tp.steps
    odd = Schedule.from_params(SimpleNamespace(steps=3, log_every=1, sample_every=1, checkpoint_every=1))  # fmt: skip
    assert all(s.log and s.sample and s.checkpoint for s in map(odd.at, (1, 2, 3)))
