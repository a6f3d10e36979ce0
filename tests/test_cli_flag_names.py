"""The flag each command names for a setting its runs record (commands/_flag_names.py): every
compared setting has one, and it is a real option of that command's parser (read from argparse
itself, not from the tables), the option whose value is that setting where the names agree."""
from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

import kinetic_fm as kfm
from kinetic_fm.cli import build_parser, main
from kinetic_fm.commands._flag_names import SettingFlags


def _options(command: str) -> dict[str, argparse.Action]:
    """Each option string of ``kfm command``'s parser -> its action."""
    sub = build_parser().get_default("_commands")[command]
    return {option: action for action in sub._actions for option in action.option_strings}


def _flags_in(phrase: str) -> list[str]:
    """The flags a table's entry names: "--data/--n" -> ["--data", "--n"]."""
    return re.findall(r"--[a-z][\w-]*", phrase)


def _sample_compared_settings() -> list[str]:
    # every key a sample run's manifest compares, every optional one switched on: _config's keys and
    # the KTS keys, the seeds, the shard size, and the identities of a built-in field, a net and --train
    import kinetic_fm.commands.sample as sample

    args = argparse.Namespace(truncate=2, backend="faiss", field=sample.EMPIRICAL, model=None, dim=None, steps=4,
                              solver="dopri5", grid="uniform", quadrature="solver", split=None, on_nonfinite="raise",
                              dtype="float32", device="cpu", save_x=True, profile=True, rtol=1e-3, atol=1e-3,
                              first_step=0.1, max_steps=None)
    config = sample._config(args, sample._Target(None, (2,), {}), kfm.KTS(), sample._Conditioning(1, 2.0, 3))
    fields = [f"config.{key}" for key in config] + [f"config.shaping.{key}" for key in config["shaping"]]
    fields += ["seeds.n", "seeds.seed_start", "shard_size"]
    fields += ["identity.field", "identity.class", "identity.params_sha256", "identity.kind",
               "identity.weights_sha256", "identity.train_sha256", "identity.train_shape", "identity.train_dtype"]
    return fields


def test_every_setting_a_sample_run_compares_names_a_real_flag_of_kfm_sample():
    import kinetic_fm.commands.sample as sample

    options = _options("sample")
    for setting in _sample_compared_settings():
        phrase = sample.SETTINGS.flag_of(setting)
        assert phrase, f"{setting}: no flag"
        if phrase == "the KTS flags":   # config.shaping as a whole: each of its keys names its own flag
            assert setting == "config.shaping"
            continue
        flags = _flags_in(phrase)
        assert flags and all(flag in options for flag in flags), f"{setting}: {phrase} is not a kfm sample flag"
        name = setting.removeprefix("config.")
        if setting.startswith("config.") and "." not in name and name != "sample_shape":
            # the option that sets it stores it under its own name (--no-save-x: dest save_x)
            assert options[flags[0]].dest == name, f"{setting}: {flags[0]} sets {options[flags[0]].dest}"
    # and each KTS key by the flag of that parameter (--tau sets tau_split)
    kts = {f.name for f in dataclasses.fields(kfm.KTS)}
    shaping = [s for s in sample.SETTINGS.direct if s.startswith("config.shaping.")]
    assert {s.removeprefix("config.shaping.") for s in shaping} == kts
    for setting in shaping:
        assert sample.SETTINGS.flag_of(setting) in options


def test_every_setting_a_training_run_compares_names_a_real_flag_of_kfm_train():
    import kinetic_fm.commands.train as train
    from kinetic_fm.models import TrainConfig

    options = _options("train")
    # a resume compares the run's records and the TrainConfig's fields but those train() lets change
    free = {"steps", "save_every", "checkpoints"}
    compared = ["model", "data_shape", "info"]
    compared += [f"train.{f.name}" for f in dataclasses.fields(TrainConfig) if f.name not in free]
    for setting in compared:
        phrase = train.SETTINGS.flag_of(setting) or train._DERIVED.get(setting)
        if setting == "train.betas":   # AdamW's betas: kfm train has no flag, so a resume never changes them
            assert phrase is None and "--betas" not in options
            continue
        flags = _flags_in(phrase or "")
        assert flags and all(flag in options for flag in flags), f"{setting}: {phrase} is not a kfm train flag"
        if setting.startswith("train."):
            assert options[flags[0]].dest == setting.removeprefix("train."), setting
    # every record compared has its flags, by its name or its keys' ("info.n", "model.kind")
    records = {s if s.startswith("train.") else s.partition(".")[0] for s in [*train.SETTINGS.direct, *train._DERIVED]}
    assert records | {"train.betas"} == set(compared)


def test_the_library_names_each_command_rewords_are_its_real_flags():
    import kinetic_fm.commands.memorization as memorization
    import kinetic_fm.commands.sample as sample
    import kinetic_fm.commands.train as train

    for command, table in (("memorization", memorization._AUDIT_FLAGS), ("train", train._FLAGS),
                           ("sample", sample._SAMPLE_FLAGS)):
        options = _options(command)
        for name, phrase in table.items():
            flags = _flags_in(phrase)
            assert flags and all(flag in options for flag in flags), f"kfm {command}: {name} -> {phrase}"


def test_a_derived_setting_is_named_only_when_no_other_differs():
    table = SettingFlags({"config.dim": "--dim"}, derived={"config.sample_shape": "--shape"})
    assert table.named(["config.sample_shape", "config.dim"]) == ["config.dim"]
    assert table.named(["config.sample_shape"]) == ["config.sample_shape"]
    assert table.flag_of("config.sample_shape") == "--shape" and table.flag_of("config.other") is None


def test_a_train_resume_refusal_keeps_a_folder_named_like_a_setting(tmp_path, capsys):
    # it read "cannot resume .../--seed/resume.pt": every "train.<name>" was reworded, paths too
    out = tmp_path / "train.seed"
    common = ["train", "--data", "gmm", "--n", "50", "--batch-size", "8", "--width", "8", "--steps", "2",
              "--checkpoints", "none", "--no-progress", "--out", str(out)]
    assert main(common) == 0
    capsys.readouterr()
    assert main([*common, "--lr", "0.002", "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"cannot resume {out / 'resume.pt'}: settings differ from the saved run: --lr (the run's 0.001" in err


@pytest.mark.parametrize("command", ["sample", "train"])
def test_each_table_names_only_flags_of_its_own_command(command):
    import importlib

    table = importlib.import_module(f"kinetic_fm.commands.{command}").SETTINGS
    options = _options(command)
    phrases = [*table.direct.values(), *table.derived.values()]
    named = {flag for phrase in phrases for flag in _flags_in(phrase)}
    assert named and named <= set(options), sorted(named - set(options))


def test_a_library_message_names_its_arguments_as_flags_past_its_opening_word_but_not_its_prose():
    from kinetic_fm.commands._flag_names import named_by_its_flag

    flags = {"steps": "--steps", "lr": "--lr", "grad_clip": "--grad-clip", "beta0": "--beta0", "k": "--k",
             "landing": "--landing"}
    text = ("beta0 = 5.0 is too large for the exponential landing with k = 3; the largest admissible beta0 is 0.05 "
            "at steps=4: try a smaller learning rate (lr) or clipping (grad_clip), not e^k")
    assert str(named_by_its_flag(ValueError(text), flags)) == (
        "--beta0 = 5.0 is too large for the exponential landing with --k = 3; the largest admissible --beta0 is 0.05 "
        "at --steps 4: try a smaller learning rate (--lr) or clipping (--grad-clip), not e^k")
    # a name that is also a word of the prose stays one where it is not the argument's
    prose = "checkpoint steps must lie in [1, 10] (the steps of this run), got [12]"
    assert str(named_by_its_flag(ValueError(prose), flags)) == prose


def test_kfm_train_names_the_flags_when_training_diverges(tmp_path, capsys):
    # it read "try a smaller learning rate (lr, kfm train --lr) or gradient clipping (grad_clip)"
    args = ["train", "--data", "gmm", "--n", "50", "--batch-size", "8", "--width", "8", "--steps", "5",
            "--checkpoints", "none", "--no-progress", "--lr", "1e30", "--grad-clip", "0", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "training diverged at step" in err
    assert "a smaller learning rate (--lr) or gradient clipping (--grad-clip)" in err, err
