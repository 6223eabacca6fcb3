"""The verdict of an audit: is the model backdoored, and towards which class? One package, one floor:
above the engine steps and the defenses it reads as evidence, below the run kinds that call it.

    evidence.py            `Evidence` (one piece: what it supports, the classes it names, its numbers)
                           and `Verdict`, as report.json writes them
    kd_disagreement.py     the structure of the teacher/student disagreements (flip matrix, funnel test)
    detectors.py           Neural Cleanse's and activation clustering's numbers read as evidence
    recovered_trigger.py   each class's recovered trigger on teacher vs distilled student
    rule.py                `combine`: the pieces → status, target classes, confidence; its text
    rescore.py             a stored report's verdict under the current constants (calibration)
    gather.py              `blind_audit`: run the pieces on a teacher and its student, as a run kind does

It never sees the true trigger, the test set or the poison indices (evaluation-only).
"""
