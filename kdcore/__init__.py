"""kdcore: the engine of kdaudit — distil a suspect classifier into a clean student, flag the
training samples on which they disagree, fine-tune on the rest, and measure it all.

Importing kdcore loads no UI code and runs nothing; see `python -m kdcore --help`.
"""

__version__ = "0.1.0"
