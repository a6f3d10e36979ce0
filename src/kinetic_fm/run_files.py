"""The names of the files in a run folder that layers above :mod:`kinetic_fm.runs` look for, in a module that
imports nothing: importing the runs package loads pyarrow, which ``kfm sample`` defers until it has asked
whether a folder holds a run, and which ``kfm train`` never needs to refuse a sample run's folder."""

MANIFEST_NAME = "manifest.json"   # a kfm sample run's manifest (kinetic_fm.runs.manifest writes and reads it)
