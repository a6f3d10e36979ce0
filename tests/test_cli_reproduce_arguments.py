"""``kfm reproduce``'s argument errors: one form for all of them, the data specs it takes, --studies' items."""
import pytest

from kinetic_fm.cli import main

HELP_LINE = "(see 'kfm reproduce --help')\n"


@pytest.mark.parametrize("flag, value", [("--device", "gpu"), ("--device", "cuda:99"), ("--studies", "nope"),
                                         ("--data", "nope"), ("--data", "moons")])
def test_every_argument_error_points_to_the_help_as_argparses_do(tmp_path, capsys, flag, value):
    # argparse's refusals (--seed x) end with the pointer to --help; those reproduce raised itself did not
    assert main(["reproduce", "--tiny", "--out", str(tmp_path / "rep"), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kfm reproduce: error: ") and err.endswith(HELP_LINE) and err.count("\n") == 2, err


def test_an_unknown_data_spec_lists_the_specs_reproduce_takes_as_its_help_writes_them(tmp_path, capsys):
    # it listed moons, gmm and checkerboard, which reproduce refuses next, and wrote mnist:PATH, its help mnist:DIR
    from kinetic_fm.cli import build_parser

    assert main(["reproduce", "--tiny", "--out", str(tmp_path / "rep"), "--data", "nope"]) == 2
    err = capsys.readouterr().err
    forms = "digits, mnist:DIR, cifar10:PATH, celeba:PATH, folder:PATH"
    assert f"--data: unknown data spec 'nope'; expected one of {forms}\n" in err
    help_text = build_parser()._subparsers._group_actions[0].choices["reproduce"].format_help()
    assert " ".join(help_text.split()).count(forms.replace(", ", " | ")) == 1


def test_a_mistyped_data_spec_is_pointed_only_at_the_specs_reproduce_takes_in_its_spelling(tmp_path, capsys):
    # the hints came from every data spec: "moon" was pointed at moons (refused next), "MNIST" at mnist:PATH beside
    # the list's mnist:DIR, and a path without its kind at "mnist:PATH, ..."
    forms = "digits, mnist:DIR, cifar10:PATH, celeba:PATH, folder:PATH"
    kinds = "a path? give it after the kind of data it holds: mnist:DIR, cifar10:PATH, celeba:PATH or folder:PATH"
    for bad, hint in (("moon", None), ("MNIST", "did you mean mnist:DIR?"), ("mnst:/x", "did you mean mnist:/x?"),
                      ("Folder", "did you mean folder:PATH?"), ("digit", "did you mean digits?"),
                      ("/no/such/data", kinds)):
        assert main(["reproduce", "--tiny", "--out", str(tmp_path / "rep"), "--data", bad]) == 2
        err = capsys.readouterr().err
        words = f" ({hint}); " if hint else "; "
        assert f"--data: unknown data spec {bad!r}{words}expected one of {forms}\n" in err, err


@pytest.mark.parametrize("studies", ["semantics,,support", "semantics,", ",support"])
def test_an_empty_study_name_is_refused(tmp_path, capsys, studies):
    assert main(["reproduce", "--tiny", "--out", str(tmp_path / "rep"), "--studies", studies]) == 2
    assert f"got {studies!r} (an empty name: two commas, or one at an end)" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()


def test_spaces_around_study_names_are_stripped(monkeypatch, tmp_path):
    from kinetic_fm.studies import reproduce as module

    asked = []
    monkeypatch.setattr(module, "reproduce", lambda cfg, out, *, studies, progress: asked.append(studies)
                        or (tmp_path / "r.md", tmp_path / "r.html"))
    assert main(["reproduce", "--tiny", "--out", str(tmp_path / "rep"), "--studies", " semantics , support"]) == 0
    assert asked == [("semantics", "support")]
