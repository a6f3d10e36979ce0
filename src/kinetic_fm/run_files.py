"""The names of the files in a run folder that more than one layer looks for, in a module that imports nothing:
``kfm --help`` loads the command modules, which ask whether a folder holds a run, and would otherwise load the
modules that write these files (the models package; the runs package's manifest, plan and lock)."""

MANIFEST_NAME = "manifest.json"   # a kfm sample run's manifest (kinetic_fm.runs.manifest writes and reads it)
TRAIN_CONFIG_NAME = "config.json"   # a kfm train run's record (kinetic_fm.models.train writes it, run_config reads it)
