import os
import pickle
import stat

import pytest
import torch

from kinetic_fm.models import (UNet, UnsafeCheckpointError, VelocityMLP, load_model, load_state, load_weights,
                               read_metadata, save_model)
from kinetic_fm.models.checkpoint import save_state, save_weights


def test_save_and_load_model_roundtrip(tmp_path):
    model = UNet(1, base_channels=8, channel_mults=(1, 2), num_classes=3)
    ema = UNet(1, base_channels=8, channel_mults=(1, 2), num_classes=3)
    save_model(model, tmp_path / "m.safetensors", ema=ema, step=7)
    assert read_metadata(tmp_path / "m.safetensors")["step"] == 7
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "m.safetensors", weights="model")(x, t), model.eval()(x, t))
        assert torch.equal(load_model(tmp_path / "m.safetensors")(x, t), ema.eval()(x, t))


def test_load_weights_unwraps_state_dict_and_module_prefix(tmp_path):
    model = VelocityMLP(2, hidden=8, depth=1)
    wrapped = {"best_prec1": 0.5, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(wrapped, tmp_path / "w.th")
    loaded = load_weights(tmp_path / "w.th")
    assert loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


class _Payload:
    """Unpickling this object would create a file: a stand-in for arbitrary code execution."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_code_executing_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "executed"
    raw = tmp_path / "evil.pt"
    # protocol 2: the weights-only reader reads up to its objects (one of 4 or later it refuses at its first opcode)
    raw.write_bytes(pickle.dumps({"weight": torch.zeros(2), "x": _Payload(str(marker))}, protocol=2))
    zipped = tmp_path / "evil_zip.pt"
    torch.save({"weight": torch.zeros(2), "x": _Payload(str(marker))}, zipped)
    for path in (raw, zipped):
        with pytest.raises(UnsafeCheckpointError, match=rf"refusing to load .*{path.name}.*run code"):
            load_state(path)
        with pytest.raises(UnsafeCheckpointError):
            load_weights(path)
        assert not marker.exists()
    # the payload is real: plain pickle would have executed it
    pickle.loads(raw.read_bytes())
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_of_protocol_4_or_later_is_refused_as_such_not_as_code(tmp_path):
    # torch's weights-only reader stops at protocol 4's FRAME opcode (149), before any object: the refusal
    # said "(Unsupported operand 149)" and that the file "would run code", of a plain dict of tensors too
    assert pickle.FRAME == bytes([149])
    state = {"weight": torch.ones(2)}
    files = {}
    for protocol in (4, 5):
        files[f"pickle-{protocol}.pt", protocol] = lambda path, p=protocol: path.write_bytes(pickle.dumps(state, p))
        files[f"torch-{protocol}.pt", protocol] = lambda path, p=protocol: torch.save(state, path, pickle_protocol=p)
    files["numbers.pt", 5] = lambda path: path.write_bytes(pickle.dumps({"a": 1}, protocol=5))
    marker = tmp_path / "executed"   # an object that would run code: refused at the protocol, before it
    files["payload.pt", 5] = lambda path: path.write_bytes(pickle.dumps({"x": _Payload(str(marker))}, protocol=5))
    for (name, protocol), write in files.items():
        write(tmp_path / name)
        with pytest.raises(UnsafeCheckpointError) as caught:
            load_state(tmp_path / name)
        said = str(caught.value)
        assert said.startswith(f"refusing to load {tmp_path / name}: it is a pickle of protocol {protocol}, which "
                               "torch's weights-only reader does not read"), said
        assert "run code" not in said and "149" not in said and "without pickle_protocol" in said, said
    assert not marker.exists()
    torch.save(state, tmp_path / "default.pt")   # torch.save's default protocol is read
    assert torch.equal(load_state(tmp_path / "default.pt")["weight"], state["weight"])


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("holds", ["weights", "array"])
def test_a_pickle_of_protocol_4_names_a_re_save_at_torch_s_own_protocol(tmp_path, holds):
    # a plain {"w": tensor} saved with pickle_protocol=4 IS a state dict: the way out is torch.save's default
    # protocol, not "Only plain tensors and state dicts are accepted; re-save ... model.state_dict()"
    path = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, path, pickle_protocol=4)
    with pytest.raises(UnsafeCheckpointError) as caught:
        load_state(path, holds=holds)
    noun, other = {"weights": ("weights", "as safetensors"),
                   "array": ("tensor", "the array with np.save('x.npy', a)")}[holds]
    assert str(caught.value) == (
        f"refusing to load {path}: it is a pickle of protocol 4, which torch's weights-only reader does not read "
        f"(torch.save writes protocol 2 unless given pickle_protocol). Its contents are not read; re-save the {noun} "
        f"with torch.save without pickle_protocol (or with pickle_protocol=2), or {other}, from a trusted "
        "environment.")
    torch.save({"w": torch.ones(2)}, path, pickle_protocol=2)   # the way out is sound
    assert torch.equal(load_state(path, holds=holds)["w"], torch.ones(2))


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_state(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="junk.pt"):
        load_state(tmp_path / "junk.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_weights(tmp_path / "junk.safetensors")


@pytest.mark.parametrize("text", ["hello\n", "airplane\n", "root:x:0:0\n", "kfm\n", "jN", "Mus.98"])
def test_a_text_file_is_named_as_not_a_torch_checkpoint(tmp_path, text):
    # torch's weights-only unpickler read some letters as opcodes and failed in its own stack:
    # KeyError 101 for "hello", IndexError for "airplane", struct.error for "jN"
    path = tmp_path / "notes.txt"
    path.write_text(text)
    for load in (load_state, load_model):
        with pytest.raises(ValueError, match=r"notes.txt: not a (readable )?torch checkpoint \("):
            load(path)


def test_the_weights_digest_ignores_header_order_and_refuses_broken_files(tmp_path):
    import json
    import struct

    from kinetic_fm.models.checkpoint import weights_digest
    from kinetic_fm.runs.manifest import sha256_file

    path = tmp_path / "w.safetensors"
    save_model(VelocityMLP((2,), hidden=4, depth=1), path)
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    flipped = json.dumps(dict(reversed(list(header.items()))), separators=(",", ":")).encode()
    flipped += b" " * (-len(flipped) % 8)
    other = tmp_path / "flipped.safetensors"
    other.write_bytes(struct.pack("<Q", len(flipped)) + flipped + raw[8 + length:])
    assert sha256_file(other) != sha256_file(path) and weights_digest(other) == weights_digest(path)
    for bad in (struct.pack("<Q", 2**63) + raw[8:], struct.pack("<Q", len(raw)) + raw[8:], b"\x01\x02"):
        path.write_bytes(bad)
        with pytest.raises(ValueError, match="not a readable safetensors file"):
            weights_digest(path)


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
def test_saved_weights_and_states_follow_the_umask(tmp_path):
    # safetensors' save_file made every .safetensors 0600 whatever the umask, while states,
    # shards and tables got 0644 (ARCHITECTURE: the umask's permissions for every file written)
    net = VelocityMLP(2, hidden=4, depth=1)
    old = os.umask(0o022)
    try:
        save_model(net, tmp_path / "net.safetensors")
        save_state({"step": 1}, tmp_path / "state.pt")
    finally:
        os.umask(old)
    for name in ("net.safetensors", "state.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    again = load_model(tmp_path / "net.safetensors", weights="model")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), net.state_dict().values()))


def test_a_run_folder_loads_final_first_strictly_and_in_eval_mode(tmp_path):
    from kinetic_fm.models import load_into
    from kinetic_fm.models.checkpoint import model_metadata, resolve_weights, save_weights

    (tmp_path / "checkpoints").mkdir()
    for step in (1, 2):
        save_model(VelocityMLP((2,), hidden=8, depth=1), tmp_path / "checkpoints" / f"step_{step:07d}.safetensors")
    assert resolve_weights(tmp_path).name == "step_0000002.safetensors"      # the latest, while training
    save_model(VelocityMLP((2,), hidden=8, depth=1), tmp_path / "final.safetensors")
    assert resolve_weights(tmp_path).name == "final.safetensors"             # final wins once written
    # a file missing one of the net's tensors is refused, not half loaded
    small = VelocityMLP((2,), hidden=8, depth=1)
    state = {f"model.{k}": v for k, v in list(small.state_dict().items())[:-1]}
    save_weights(state, tmp_path / "partial.safetensors", model_metadata(small))
    with pytest.raises(ValueError, match=r"partial.safetensors: its 'model' weights do not rebuild .*Missing key"):
        load_model(tmp_path / "partial.safetensors", weights="model")
    # damaged metadata, a config the tensors do not fit, a net the file does not fit: each names the
    # file (they were torch's or json's own errors, naming none)
    import json

    from safetensors.torch import save_file

    good = {f"ema.{k}": v for k, v in small.state_dict().items()}
    for name, config in (("json", "{cut"), ("wider", json.dumps({**small.config, "hidden": 16})),
                         ("unknown", json.dumps({"shape": [2], "width": 8})), ("list", "[2, 8]")):
        save_file(good, tmp_path / f"{name}.safetensors", metadata={"kinetic_fm.kind": "mlp", "kinetic_fm.config": config})
        with pytest.raises(ValueError, match=rf"^{tmp_path / name}.safetensors: its "):
            load_model(tmp_path / f"{name}.safetensors")
    net = VelocityMLP((2,), hidden=8, depth=1).train()
    save_weights(net.state_dict(), tmp_path / "w.safetensors")
    assert not load_into(VelocityMLP((2,), hidden=8, depth=1).train(), tmp_path / "w.safetensors").training
    with pytest.raises(ValueError, match=r"w.safetensors: does not fit VelocityMLP \(Error\(s\) in loading"):
        load_into(VelocityMLP((2,), hidden=16, depth=1), tmp_path / "w.safetensors")


def test_a_full_disk_while_saving_a_state_is_an_oserror_and_leaves_nothing(tmp_path):
    # torch.save reported a write failure as "RuntimeError: [enforce fail at inline_container.cc]
    # unexpected pos", which kfm train and kfm reproduce showed as a traceback (helper-142); a
    # file-size limit stands in for a full disk, in a child process
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import errno, resource, signal, torch
        from kinetic_fm.models.checkpoint import save_state
        from kinetic_fm.studies.workspace import atomic_torch_save
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        for save in (save_state, atomic_torch_save):
            try:
                save({{"w": torch.zeros(100_000)}}, {str(tmp_path)!r} + "/state.pt")
            except OSError as err:
                print(save.__name__, err.errno == errno.EFBIG)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["save_state", "True", "atomic_torch_save", "True"], done.stderr
    assert list(tmp_path.iterdir()) == []  # no state, no temporary


@pytest.mark.parametrize("strict", [True, False])
def test_load_into_a_training_file_points_to_load_model_and_never_loads_nothing(tmp_path, strict):
    # with strict=False the model./ema. keys of a save_model file matched none of the net's:
    # load_into returned the net untouched, random weights sampled as if trained
    from kinetic_fm.models import load_into

    saved = VelocityMLP((2,), hidden=8, depth=1)
    save_model(saved, tmp_path / "final.safetensors", ema=saved)
    net = VelocityMLP((2,), hidden=8, depth=1)
    with pytest.raises(ValueError, match=r"final.safetensors: none of its 36 tensors is one of VelocityMLP's .*"
                                         r"'model\.' and 'ema\.' .*load_model"):
        load_into(net, tmp_path / "final.safetensors", strict=strict)
    # a partial fit with strict=False still loads what fits (its documented use)
    save_weights({"inp.weight": torch.ones(8, 2), "extra": torch.zeros(1)}, tmp_path / "part.safetensors")
    if not strict:
        assert torch.equal(load_into(net, tmp_path / "part.safetensors", strict=False).inp.weight, torch.ones(8, 2))


def test_a_resume_state_given_as_weights_points_to_its_run_folder(tmp_path):
    # "expected a state dict of tensors" for kfm train's resume.pt left the user guessing
    from kinetic_fm.models import TrainConfig, train

    train(VelocityMLP((2,), hidden=8, depth=1), torch.randn(16, 2), TrainConfig(steps=2, batch_size=4,
                                                                                checkpoints="none"), out=tmp_path)
    for load in (load_model, load_weights):
        with pytest.raises(ValueError, match=r"resume.pt: a training run's resume state, not a weights file; "
                                             r"load the run folder .* \(its final.safetensors\)"):
            load(tmp_path / "resume.pt")


def test_a_checkpoint_loads_into_a_net_of_another_dtype_on_the_device_exactly(tmp_path):
    # float32 weights into a float64 net on "cuda": an exact widening, and the device net computes
    # what the CPU one does (fake_cuda runs the CPU's kernels)
    from fake_cuda import fake_cuda

    from kinetic_fm.models import load_into

    torch.manual_seed(0)
    saved = VelocityMLP((2,), hidden=8, depth=1)
    save_model(saved, tmp_path / "w.safetensors", ema=saved)
    x, t = torch.randn(5, 2, dtype=torch.float64), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    on_cpu = load_model(tmp_path / "w.safetensors").double()
    with fake_cuda(), torch.no_grad():
        save_weights(saved.state_dict(), tmp_path / "plain.safetensors")
        net = load_into(VelocityMLP((2,), hidden=8, depth=1).double().to("cuda"), tmp_path / "plain.safetensors")
        for name, value in net.state_dict().items():
            assert value.device.type == "cuda" and value.dtype == torch.float64
            assert torch.equal(value.cpu(), saved.state_dict()[name].double())
        v = net(x.to("cuda"), t.to("cuda")).cpu()
    torch.testing.assert_close(v, on_cpu(x, t).detach(), rtol=0, atol=0)


@pytest.mark.parametrize("saved_dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_load_model_returns_the_net_in_its_saved_dtype_unless_dtype_is_given(tmp_path, saved_dtype):
    # a float16 or bfloat16 net came back float32 while a float64 one came back float64
    torch.manual_seed(0)
    saved = VelocityMLP((2,), hidden=8, depth=1).to(saved_dtype).eval()
    save_model(saved, tmp_path / "w.safetensors", ema=saved)
    x, t = torch.randn(5, 2), torch.linspace(0, 1, 5)
    net = load_model(tmp_path / "w.safetensors")
    assert {v.dtype for v in net.state_dict().values()} == {saved_dtype}
    for name, value in saved.state_dict().items():
        assert torch.equal(net.state_dict()[name], value), name
    with torch.no_grad():
        assert torch.equal(net(x.to(saved_dtype), t.to(saved_dtype)), saved(x.to(saved_dtype), t.to(saved_dtype)))
    wide = load_model(tmp_path / "w.safetensors", dtype=torch.float32)      # e.g. to sample float32 noise
    assert {v.dtype for v in wide.state_dict().values()} == {torch.float32}
    for name, value in saved.state_dict().items():                          # the saved values, converted
        assert torch.equal(wide.state_dict()[name], value.float()), name
    for bad in (torch.int64, "float32", torch.complex64):
        with pytest.raises(ValueError, match=r"dtype must be None \(the saved dtype\) or a real floating torch.dtype"):
            load_model(tmp_path / "w.safetensors", dtype=bad)


@pytest.mark.parametrize("text, problem", [
    ('{\n  "model": {\n    "kind": "unet",\n', r"is not valid JSON \(.*\); was it edited or cut short\?"),
    ('{"data_shape": 30}', r"records a data_shape that is no shape \(.*\), got 30; was it edited\?"),
])
@pytest.mark.parametrize("where", ["final.safetensors", "checkpoints/step_0000004.safetensors"])
def test_a_damaged_run_config_is_named_where_the_sample_shape_is_read_from_it(tmp_path, text, problem, where):
    # a run trained before its weights recorded the sample shape: a damaged config.json read as "no shape" (a JSON
    # list raised AttributeError) (helper-269)
    from kinetic_fm.models.checkpoint import recorded_sample_shape
    from kinetic_fm.models.run_config import DamagedTrainConfigError

    net = UNet(1, base_channels=8, channel_mults=(1,))
    save_model(net, tmp_path / where, ema=net)
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(DamagedTrainConfigError, match=rf"config.json: the training run's config.json {problem} "
                       r".*records no sample shape .*: put back a good copy of it, or give the shape \(kfm sample "
                       r"--shape C,H,W\)"):
        recorded_sample_shape(tmp_path / where)
    # another program's, or damaged beyond recognition (helper-282): no record
    for foreign in ('{"architectures": ["CLIPModel"]}', "[30, 1, 6, 6]", "", '{"data_shape": [30, 1, 6'):
        (tmp_path / "config.json").write_text(foreign)
        assert recorded_sample_shape(tmp_path / where) is None
    (tmp_path / "config.json").write_text('{"data_shape": [30, 1, 6, 6]}')
    assert recorded_sample_shape(tmp_path / where) == (1, 6, 6)


@pytest.mark.parametrize("where, read", [
    ("final.safetensors", True), ("checkpoints/step_0000004.safetensors", True),
    ("net.safetensors", False), ("nets/net.safetensors", False), ("weights/final.safetensors", False),
    ("checkpoints/net.safetensors", False),
])
def test_the_sample_shape_is_read_from_config_json_only_in_a_training_run_s_layout(tmp_path, where, read):
    # recorded_sample_shape read config.json beside any weights file and two folders up: an unrelated
    # config.json (an experiment folder's) decided the shape of a net saved below it (helper-273)
    from kinetic_fm.models.checkpoint import recorded_sample_shape

    net = UNet(1, base_channels=8, channel_mults=(1,))
    save_model(net, tmp_path / where, ema=net)   # no sample_shape in its metadata: as a run trained before it
    (tmp_path / "config.json").write_text('{"data_shape": [30, 1, 6, 6]}')
    assert recorded_sample_shape(tmp_path / where) == ((1, 6, 6) if read else None)


def test_the_weights_digest_of_some_tensors_falls_back_to_every_tensor_when_none_is_theirs(tmp_path):
    # weights="ema" hashes the header and the ema.* tensors only (a study loads those); a file with no ema.* tensor
    # (a judge, loaded with weights="model") hashed its header alone: zeros and ones got the same digest
    from kinetic_fm.models.checkpoint import save_weights, weights_digest

    def digest(name, **tensors):
        save_weights(tensors, tmp_path / f"{name}.safetensors")
        return weights_digest(tmp_path / f"{name}.safetensors", weights="ema")

    zeros, ones = torch.zeros(3), torch.ones(3)
    assert digest("zeros", **{"model.w": zeros}) != digest("ones", **{"model.w": ones})
    both = digest("both", **{"model.w": zeros, "ema.w": zeros})
    assert digest("model_differs", **{"model.w": ones, "ema.w": zeros}) == both
    assert digest("ema_differs", **{"model.w": zeros, "ema.w": ones}) != both
    alone = tmp_path / "zeros.safetensors"
    assert weights_digest(alone, weights="ema") == weights_digest(alone)


class _Config:
    pass


def test_a_pickled_object_is_refused_naming_its_class_without_torch_s_allowlisting_advice(tmp_path):
    """torch's text (2.13) says to allowlist the global with torch.serialization.add_safe_globals "if you
    trust this class/function" and to rerun with weights_only=False, beside our advice to re-save from a
    trusted environment: the kfm commands cannot allowlist, and the weights readers want tensors, not the
    object. Only the fact torch's text carries is kept: the global the file needs."""
    torch.save({"weight": torch.zeros(2), "config": _Config()}, tmp_path / "obj.pt")
    torch.save({"weight": torch.zeros(2), "log": print}, tmp_path / "fn.pt")
    for file, needed in (("obj.pt", f"{_Config.__module__}._Config"), ("fn.pt", "builtins.print")):
        with pytest.raises(UnsafeCheckpointError) as refused:
            load_state(tmp_path / file)
        message = str(refused.value)
        assert message.startswith(f"refusing to load {tmp_path / file}: it contains Python objects that would run "
                                  f"code when unpickled (it needs {needed}, which torch's weights-only reader does "
                                  f"not build). Only plain tensors and state dicts are accepted"), message
        assert "add_safe_globals" not in message and "weights_only" not in message and "\n" not in message
