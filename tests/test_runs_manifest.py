"""Run manifest, identity fingerprints and the shard plan (kinetic_fm.runs.manifest / plan)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kinetic_fm.runs import ResumeMismatchError, RunManifest, ShardPlan, fingerprint, read_manifest
from kinetic_fm.runs.manifest import check_resume, sha256_file, write_manifest


def _manifest(**changes) -> RunManifest:
    base = dict(kind="sample",
                config={"solver": "heun", "steps": 10, "shaping": {"alpha0": 0.01, "beta0": 0.01}},
                identity={"field": "gaussian", "params_sha256": "abc"},
                seed_start=5, n=10, shard_size=4)
    base.update(changes)
    return RunManifest(**base)


def test_fingerprint_sees_every_element_and_ignores_container_type():
    a = torch.arange(6, dtype=torch.float64)
    b = a.clone()
    b[3] += 1e-12
    assert fingerprint({"m": a}) == fingerprint({"m": a.clone()})
    assert fingerprint({"m": a}) != fingerprint({"m": b})
    assert fingerprint({"m": a}) != fingerprint({"m": a.float()})  # dtype is part of identity
    # even where the bytes agree: zeros are zero bytes in every dtype of one width
    assert fingerprint(np.zeros(4, np.float32)) != fingerprint(np.zeros(4, np.int32))
    assert fingerprint({"m": a.reshape(2, 3)}) != fingerprint({"m": a.reshape(3, 2)})  # and the shape
    assert fingerprint({"m": a}) == fingerprint({"m": a.numpy()})
    assert fingerprint((1, 2.5, "x")) == fingerprint([1, 2.5, "x"])
    with pytest.raises(TypeError, match="cannot fingerprint"):
        fingerprint({"f": object()})


def test_sha256_file_matches_hashlib(tmp_path):
    import hashlib

    data = np.random.default_rng(0).bytes(3_000_000)
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    assert sha256_file(path, chunk_bytes=1 << 16) == hashlib.sha256(data).hexdigest()


def test_manifest_round_trips_through_json(tmp_path):
    m = _manifest(config={"grid": ("uniform",), "shape": (2, 3)}, runtime={"batch_size": 7})
    write_manifest(tmp_path, m)
    back = read_manifest(tmp_path)
    assert back == m
    assert back.run_id == m.run_id
    assert back.config["shape"] == [2, 3]
    assert not list(tmp_path.glob(".*tmp-*"))  # the atomic write left no temporary


def test_a_manifest_of_another_format_is_refused_naming_it(tmp_path):
    write_manifest(tmp_path, _manifest())
    path = tmp_path / "manifest.json"
    path.write_text(path.read_text().replace('"format": 1', '"format": 2'))
    with pytest.raises(ValueError, match=r"manifest.json: unsupported manifest format 2 \(expected 1\)"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("edit, message", [
    (lambda body: body.pop("versions"), None),                       # informational: read without it
    (lambda body: body.pop("created"), None),
    (lambda body: body.pop("n"), r"lacks 'n'"),
    (lambda body: body.pop("config"), r"lacks 'config'"),
    (lambda body: body.update(n="400"), r"'n' must be an integer, got '400'"),
    (lambda body: body.update(shard_size=50.0), r"'shard_size' must be an integer, got 50.0"),
    (lambda body: body.update(seed_start=True), r"'seed_start' must be an integer, got True"),
    (lambda body: body.update(config=[1]), r"'config' must be a JSON object, got list"),
    (lambda body: body.update(kind=3), r"'kind' must be a string, got 3"),
])
def test_a_manifest_missing_a_field_or_holding_the_wrong_type_is_refused_naming_it(tmp_path, edit, message):
    # KeyError, TypeError from ShardPlan's comparisons, a float range() (helper-100)
    write_manifest(tmp_path, _manifest())
    path = tmp_path / "manifest.json"
    body = json.loads(path.read_text())
    edit(body)
    path.write_text(json.dumps(body))
    if message is None:
        assert read_manifest(tmp_path).run_id == _manifest().run_id
    else:
        with pytest.raises(ValueError, match=r"manifest.json: the run manifest.* " + message):
            read_manifest(tmp_path)


@pytest.mark.parametrize("edit, message", [
    (lambda body: body.pop("format"), r"lacks 'format'"),        # read as "unsupported manifest format None"
    (lambda body: body.update(n=0), r"n must be >= 1"),            # the plan's own refusal, as a damage
    (lambda body: body.update(seed_start=-1), r"seed_start must lie in"),
    (lambda body: body.update(versions=[1]), r"'versions' must be a JSON object, got list"),   # informational,
    (lambda body: body.update(runtime="x"), r"'runtime' must be a JSON object, got str"),      # but read later
    (lambda body: body.update(created=3), r"'created' must be a string, got 3"),
])
def test_a_manifest_with_a_value_no_run_writes_is_refused_as_damaged(tmp_path, edit, message):
    # these read as another format or a plain ValueError (which the resume's refusal does not word as a
    # damaged manifest, with the way on), or were read and failed later: versions.get on a resume,
    # runtime.get in read_samples (AttributeError)
    from kinetic_fm.runs.manifest import DamagedManifestError

    write_manifest(tmp_path, _manifest())
    path = tmp_path / "manifest.json"
    body = json.loads(path.read_text())
    edit(body)
    path.write_text(json.dumps(body))
    with pytest.raises(DamagedManifestError, match=r"manifest.json: the run manifest.*" + message):
        read_manifest(tmp_path)


@pytest.mark.parametrize("text, message", [('{"format": 1, "kind": ', "is not valid JSON"), ("[1, 2]", "got list"),
                                           ("", "is not valid JSON")])
def test_a_manifest_that_is_no_json_object_is_refused_as_damaged_naming_the_file(tmp_path, text, message):
    from kinetic_fm.runs.manifest import DamagedManifestError

    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(DamagedManifestError, match=f"{tmp_path / 'manifest.json'}: .*{message}"):
        read_manifest(tmp_path)


def test_run_id_ignores_informational_fields():
    a = _manifest(runtime={"batch_size": 1})
    b = _manifest(runtime={"batch_size": 99}, versions={"torch": "0"}, created="yesterday")
    assert a.run_id == b.run_id
    assert a.run_id != _manifest(n=11).run_id


def test_resume_guard_names_each_differing_field():
    stored = _manifest()
    assert check_resume(stored, _manifest(runtime={"batch_size": 3})) == []
    changed = _manifest(config={"solver": "heun", "steps": 10, "shaping": {"alpha0": 0.01, "beta0": 0.02}})
    with pytest.raises(ResumeMismatchError, match=r"config\.shaping\.beta0 \(stored 0\.01, now 0\.02\)"):
        check_resume(stored, changed)
    # a run with KTS resumed without: the key named once, each side's value as stored (it read
    # "config.shaping (stored '<absent>', now None)", backwards, beside a line per parameter)
    dropped = _manifest(config={"solver": "heun", "steps": 10, "shaping": None})
    assert stored.differences(dropped) == ["config.shaping (stored {'alpha0': 0.01, 'beta0': 0.01}, now None)"]
    assert dropped.differences(stored) == ["config.shaping (stored None, now {'alpha0': 0.01, 'beta0': 0.01})"]
    assert _manifest(config={"solver": "heun"}).differences(_manifest(config={"solver": "heun", "steps": 10})) == [
        "config.steps (stored '<absent>', now 10)"]
    with pytest.raises(ResumeMismatchError) as err:
        check_resume(stored, _manifest(identity={"field": "gaussian", "params_sha256": "abd"}, shard_size=5))
    assert "identity.params_sha256" in str(err.value) and "shard_size" in str(err.value)
    with pytest.raises(ResumeMismatchError, match=r"seeds\.seed_start"):
        check_resume(stored, _manifest(seed_start=6))
    with pytest.raises(ResumeMismatchError, match="kind"):          # a sample run is not a study stage
        check_resume(stored, _manifest(kind="memorization"))
    assert _manifest(kind="memorization").run_id != stored.run_id


@pytest.mark.parametrize("stored,now", [(1, 1.0), (1, True), (0, False), ([1, 2], [1.0, 2]), ({"k": 1}, {"k": 1.0})])
def test_resume_refuses_a_value_of_another_json_type_as_the_run_id_does(stored, now):
    # Python's == takes 1 == 1.0 == True, the run id (JSON text) does not: the guard let such a
    # resume through, whose shards then all read as "written by a different run"
    a, b = _manifest(config={"beta0": stored}), _manifest(config={"beta0": now})
    assert a.run_id != b.run_id
    with pytest.raises(ResumeMismatchError, match=r"config\.beta0"):
        check_resume(a, b)


def test_a_resume_refusal_hands_over_its_differences_for_a_command_line_to_word():
    import pickle

    from kinetic_fm.runs.manifest import Difference

    stored = _manifest()
    with pytest.raises(ResumeMismatchError) as err:
        check_resume(stored, _manifest(n=stored.n + 1, shard_size=stored.shard_size + 1))
    want = (Difference("seeds.n", stored.n, stored.n + 1),
            Difference("shard_size", stored.shard_size, stored.shard_size + 1))
    assert err.value.differences == want
    assert all(str(d) in str(err.value) for d in want)   # the library's message: the fields, as before
    again = pickle.loads(pickle.dumps(err.value))        # it crosses ranks whole
    assert again.differences == want and str(again) == str(err.value)


def test_a_damaged_manifest_hands_over_what_is_wrong_for_a_command_line_to_word(tmp_path):
    # a command naming the file its own way ("--samples RUN: its manifest.json ...") had only the whole message,
    # led by the file's path (helper-295)
    from kinetic_fm.runs.manifest import DamagedManifestError

    write_manifest(tmp_path, _manifest())
    body = json.loads((tmp_path / "manifest.json").read_text())
    for damage, fault in ((lambda b: b.pop("n"), " lacks 'n'; was it edited?"),
                          (lambda b: b.update(n=1.5), "'s 'n' must be an integer, got 1.5; was it edited?")):
        damaged = dict(body)
        damage(damaged)
        (tmp_path / "manifest.json").write_text(json.dumps(damaged))
        with pytest.raises(DamagedManifestError) as err:
            read_manifest(tmp_path)
        assert err.value.fault == fault
        assert str(err.value) == f"{tmp_path / 'manifest.json'}: the run manifest{fault} {err.value.way_on}"
        assert err.value.way_on.startswith("Put back")


def test_resume_with_new_library_versions_only_warns():
    stored = _manifest(versions={"torch": "2.12.0", "kinetic_fm": "0.1.0"})
    new = _manifest(versions={"torch": "2.13.0", "kinetic_fm": "0.1.0"})
    assert check_resume(stored, new) == ["torch 2.12.0 -> 2.13.0"]


def test_a_changed_kinetic_fm_source_is_a_version_difference(tmp_path):
    # the version is 0.1.0 in every commit, so a resume under a changed checkout (numbers moved in
    # their last bits by a commit) had no warning; the source digest tells them apart (helper-150)
    import shutil

    import kinetic_fm
    from kinetic_fm.runs.manifest import library_versions, source_digest

    package = Path(kinetic_fm.__file__).parent
    copy = shutil.copytree(package, tmp_path / "kinetic_fm", ignore=shutil.ignore_patterns("__pycache__"))
    assert source_digest(copy) == source_digest() == library_versions()["kinetic_fm_source"]
    (copy / "blocks.py").write_text((copy / "blocks.py").read_text() + "# another build\n")
    changed = source_digest(copy)
    assert changed != source_digest()
    stored = _manifest(versions={"kinetic_fm": "0.1.0", "kinetic_fm_source": source_digest()})
    new = _manifest(versions={"kinetic_fm": "0.1.0", "kinetic_fm_source": changed})
    assert check_resume(stored, new) == [f"kinetic_fm_source {source_digest()} -> {changed}"]


@pytest.mark.parametrize("n,size", [(1, 1), (10, 4), (12, 4), (7, 100)])
def test_plan_covers_every_seed_once_and_ranks_partition_the_shards(n, size):
    plan = ShardPlan(seed_start=100, n=n, shard_size=size)
    seeds = np.concatenate([plan.seeds(i) for i in range(plan.count)])
    assert np.array_equal(seeds, np.arange(100, 100 + n))
    assert all(1 <= len(plan.seeds(i)) <= size for i in range(plan.count))
    for world in (1, 2, 3):
        owned = sorted(i for r in range(world) for i in plan.for_rank(r, world))
        assert owned == list(range(plan.count))
    assert plan.name(0) == f"shard-00000-of-{plan.count:05d}.parquet"


def test_shard_names_widen_past_99999_shards_and_stay_the_same_width():
    # the names are a file format: a resume finds shards by them, and they sort in seed order
    plan = ShardPlan(0, 123_456, 1)
    assert plan.name(7) == "shard-000007-of-123456.parquet"
    assert plan.name(123_455) == "shard-123455-of-123456.parquet"


def test_plan_rejects_bad_numbers():
    with pytest.raises(ValueError, match="n must be >= 1"):
        ShardPlan(0, 0, 4)
    with pytest.raises(ValueError, match="shard_size must be >= 1"):
        ShardPlan(0, 4, 0)
    # helper-256: the range as a number, and the n it is 2**32 - n for, as --seed-start's message gives them
    with pytest.raises(ValueError, match=r"^seed_start must lie in \[0, 4294967292\] \(0 to 2\*\*32 - n, n being 4: "
                                         r"the seeds seed_start \.\. seed_start \+ n - 1 stay below 2\*\*32; "
                                         r".*\), got -1$"):
        ShardPlan(-1, 4, 2)
    with pytest.raises(ValueError, match=r"seed_start must lie in .* got 4294967293"):
        ShardPlan(2**32 - 3, 4, 2)                                  # the last seed would be 2**32: seed 0's noise
    assert ShardPlan(2**32 - 4, 4, 2).seeds(1).tolist() == [2**32 - 2, 2**32 - 1]
    with pytest.raises(IndexError, match=r"\[0, 3\)"):
        ShardPlan(0, 10, 4).seeds(3)
    with pytest.raises(ValueError, match="rank must be in"):
        ShardPlan(0, 10, 4).for_rank(2, 2)


def test_a_damaged_manifest_error_words_its_message_from_what_is_wrong_the_way_on_and_the_file(tmp_path):
    # read_manifest and the runner each wrote the message by hand from four overlapping strings
    import pickle

    from kinetic_fm.runs.manifest import DamagedManifestError

    path, fault = tmp_path / "manifest.json", " lacks 'n'; was it edited?"
    bare = DamagedManifestError(fault)
    assert (str(bare), bare.fault, bare.way_on) == (f"the run manifest{fault}", fault, "")
    err = DamagedManifestError(fault, "Put it back.", path)
    assert err.path == path
    assert str(err) == f"{path}: the run manifest lacks 'n'; was it edited? Put it back."
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.fault, again.way_on, again.path) == (str(err), fault, "Put it back.", path)


def test_a_damaged_manifest_and_a_damaged_train_config_name_what_is_wrong_the_same_way(tmp_path):
    # DamagedTrainConfigError's words after the file were .problem, DamagedManifestError's .fault (its .problem the
    # message less the way on); a manifest refusal without a way on ended in a space
    from kinetic_fm.commands._rows import damaged_manifest
    from kinetic_fm.models.run_config import DamagedTrainConfigError, read_train_config
    from kinetic_fm.runs.manifest import DamagedManifestError

    fault = " lacks 'n'; was it edited?"
    assert str(damaged_manifest("--train", tmp_path, DamagedManifestError(fault))) == (
        f"--train {tmp_path}: its manifest.json lacks 'n'; was it edited?")
    assert not hasattr(DamagedManifestError(fault), "problem")
    (tmp_path / "config.json").write_text('{"model": {"kind": "mlp"}, "train": {"steps": 2, "seed": 0}}')
    with pytest.raises(DamagedTrainConfigError) as err:
        read_train_config(tmp_path / "config.json")
    fault = err.value.fault
    assert fault and str(err.value) == f"{tmp_path / 'config.json'}: the training run's config.json {fault}"
    assert not hasattr(err.value, "problem")
