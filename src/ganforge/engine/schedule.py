"""When the training loop does what: one answer per step, so the loop asks instead of
repeating ``step % every == 0 or last`` conditions.

    schedule = Schedule.from_params(params.train)
    due = schedule.at(step)                  # after the step-th update (step >= 1)
    due = schedule.at(step, stopping=True)   # the loop ends here (time budget, plateau)

At the last step (``train.steps`` reached or ``stopping``) everything is due, so a run always
ends with its losses flushed, a final grid and FID, and a checkpoint to resume from.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Due:
    log: bool  # move the pending losses to the host, check them, print progress
    sample: bool  # save the fixed-noise grid and run the FID probe (with keep-best, patience)
    flush: bool  # send the loss rows gathered since the last flush to the tracker
    checkpoint: bool  # save the full training state
    last: bool  # the loop ends after this step


@dataclass(frozen=True)
class Schedule:
    steps: int  # train.steps
    log_every: int
    sample_every: int
    checkpoint_every: int

    @classmethod
    def from_params(cls, tp) -> Schedule:
        """From ``params.train`` (any object with these four attributes)."""
        return cls(tp.steps, tp.log_every, tp.sample_every, tp.checkpoint_every)

    def at(self, step: int, stopping: bool = False) -> Due:
        last = step >= self.steps or stopping
        sample = step % self.sample_every == 0 or last
        checkpoint = step % self.checkpoint_every == 0 or last
        return Due(
            log=step % self.log_every == 0 or last,
            sample=sample,
            # the tracker gets losses in one call per grid or checkpoint, not per log line
            flush=sample or checkpoint,
            checkpoint=checkpoint,
            last=last,
        )
