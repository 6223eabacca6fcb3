"""A whole job's ETA from the stage times that jobs of its kind recorded.

A job runs named stages in order ('starting', 'prepare', 'distill', 'detox', 'finetune', 'evaluate'
for an audit); the store records each finished stage's seconds (`Job.stage_times`). The time left is

    ETA = rest of the current stage + speed · Σ profile[s] over the stages s still to come

where `profile` is the median duration of each stage over the kind's recent succeeded jobs
(`median_profile`), the current stage's rest comes from its own rate (step / total) when it reports
one, else from its profile time minus the time spent, and `speed` = this job's time ÷ the profile's
over the stages it has finished, so a 10k-sample audit after a run of quick demos is not promised
the demos' pace.

Without a profile (the first job of a kind) the stages are timed by their sizes instead
(`Job.stage_sizes`: image passes per stage, from the config and the sets, `kdcore.runs.sizes`):

    rate = seconds ÷ passes over the sized stages done so far (the current one's done part included)
    ETA  = rest of the current stage + rate · Σ size[s] over the sized stages still to come

so the first job's ETA covers the whole job from its first measured stage. Without sizes either (a
kind that has none) it is the current stage's rest only.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

Profile = tuple[tuple[str, float], ...]  # (stage, seconds), in run order
SPEED_LIMITS = (0.05, 20.0)  # how much faster / slower than its profile a job is believed to run
MIN_COMPARED_S = 1.0  # finished stages shorter than this in the profile say nothing about speed


def per_stage(times: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Seconds per stage name, in first-run order (a stage that ran twice is summed)."""
    out: dict[str, float] = {}
    for name, t in times:
        out[name] = out.get(name, 0.0) + float(t)
    return out


def median_profile(runs: Iterable[Profile]) -> Profile:
    """Each stage's median seconds over `runs` (newest first), in the newest run's order."""
    jobs = [per_stage(r) for r in runs]
    order = dict.fromkeys(n for job in jobs for n in job)
    return tuple((n, statistics.median(job[n] for job in jobs if n in job)) for n in order)


def speed(done: Profile, profile: Profile) -> float:
    """This job's time ÷ the profile's over the stages it finished ('starting' is a process start
    and says nothing about the data's size); 1 when there is too little to compare."""
    expected = dict(profile)
    mine = {n: t for n, t in per_stage(done).items() if n in expected and n != "starting"}
    theirs = sum(expected[n] for n in mine)
    if theirs < MIN_COMPARED_S:
        return 1.0
    lo, hi = SPEED_LIMITS
    return min(max(sum(mine.values()) / theirs, lo), hi)


def job_eta(
    stage: str,
    in_stage_s: float | None,
    stage_rest_s: float | None,
    done: Profile,
    profile: Profile,
    sizes: Profile = (),
) -> float | None:
    """Seconds left in a job now in `stage` (entered `in_stage_s` ago; `stage_rest_s` = the rest the
    stage's own rate predicts, None when it reports none), having finished the stages `done`; from
    the kind's `profile`, else from the job's stage `sizes` (module docstring)."""
    if not profile and sizes:
        return sized_eta(stage, in_stage_s, stage_rest_s, done, sizes)
    expected = dict(profile)
    scale = speed(done, profile)
    current = stage_rest_s
    if current is None and stage in expected and in_stage_s is not None:
        current = max(expected[stage] * scale - in_stage_s, 0.0)
    if current is None or not profile:
        return current
    order = [n for n, _ in profile]
    finished = {n for n, _ in done}
    later = order[order.index(stage) + 1 :] if stage in expected else order
    return current + scale * sum(expected[n] for n in later if n not in finished and n != stage)


def sized_eta(
    stage: str, in_stage_s: float | None, stage_rest_s: float | None, done: Profile, sizes: Profile
) -> float | None:
    """`job_eta` of a job whose kind has no profile yet, from its stage `sizes` (module docstring);
    the current stage's rest while no sized stage has measured a rate."""
    size = dict(sizes)
    finished = {n: t for n, t in per_stage(done).items() if n in size and n != stage}
    seconds, passes = sum(finished.values()), sum(size[n] for n in finished)
    # The current stage's own rate counts once it has run a while: at its first report its clock
    # has just started (0 s for its first steps), and its "0 s left" says nothing.
    own = stage in size and stage_rest_s is not None and bool(in_stage_s) and in_stage_s + stage_rest_s > 0
    if own:
        seconds += in_stage_s
        passes += size[stage] * in_stage_s / (in_stage_s + stage_rest_s)
    if passes <= 0 or seconds <= 0:
        return stage_rest_s
    rate = seconds / passes
    if own:
        current = stage_rest_s
    elif stage in size:
        current = max(size[stage] * rate - (in_stage_s or 0.0), 0.0)
    else:
        current = stage_rest_s or 0.0
    order = [n for n, _ in sizes]
    later = order[order.index(stage) + 1 :] if stage in size else order
    return current + rate * sum(size[n] for n in later if n not in finished and n != stage)
