"""UI helpers of the kdaudit dashboard. Pages call these; these call kdcore and the job store.

UI helpers that draw widgets are named `*_ui` and return values.
"""
