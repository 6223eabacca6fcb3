"""The model zoo's parts (benchmarks/zoo.py runs them): `archs` (the two architectures defined here,
brought in as a user would, by ONNX and by torch.export), `recipes` (every model of the zoo and the
split into calibration and held-out parts, fixed in benchmarks/zoo_split.json), `build` (a model's
data, training, export and truth, cached by content) and `jobs` (the blind audits as `audit` jobs)."""
