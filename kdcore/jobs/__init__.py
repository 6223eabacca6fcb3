"""Persistent jobs: the SQLite store (`store`), worker processes (`worker`), reviewer verdicts (`review`)."""
