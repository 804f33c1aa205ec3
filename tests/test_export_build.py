"""``python -m idm_rt.build`` on a CPU: ONNX Runtime builds, manifest reuse and invalidation, the
exit-3 path without GPU/TensorRT, messages, and ``python -m idm_rt.export.parity``."""

import json
import shutil
import time
from pathlib import Path

import onnx
import pytest
import torch

import idm_rt
from idm_rt.backends import load_runner
from idm_rt.backends.engine_dir import dim_size, read_manifest
from idm_rt.build import main
from idm_rt.export import builder, parity, winograd

from .helpers import TINY_32


def _save_model(folder, seed):
    torch.manual_seed(seed)
    return idm_rt.save_model(idm_rt.IDM(TINY_32, max_scale=4.0), folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return _save_model(root / "a", 0), _save_model(root / "b", 1)


@pytest.fixture(scope="module")
def ort_dir(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("engines") / "ort"
    rc = main(
        [
            "--engine",
            "fp32",
            "--backend",
            "onnxruntime",
            "--model",
            str(models[0]),
            "--out",
            str(out),
            "--tile",
            "32",
            "--batch",
            "1,2",
        ]
    )
    assert rc == 0
    return out


@pytest.mark.slow
def test_onnxruntime_build_writes_a_complete_manifest(ort_dir, models):
    m = json.loads((ort_dir / "manifest.json").read_text())
    assert m["complete"] and m["backend"] == "onnxruntime" and m["precision"] == "fp32" and m["opset"] == 17
    assert m["model_hash"] == idm_rt.checkpoints.model_hash(idm_rt.load_model(models[0]))
    assert set(m["graphs"]) == {"encoder", "encoder_block", "conditioner", "unet_dynamic", "unet/32x32_b1-2"}
    assert m["pending"] == []
    assert m["buckets"] == [{"height": 32, "width": 32, "min_batch": 1, "max_batch": 2, "name": "32x32_b1-2"}]
    assert "onnxruntime" in m["identity"] and "workspace_mb" not in m["build_flags"]  # a TensorRT flag
    for g in m["graphs"].values():
        assert (ort_dir / g["onnx"]).stat().st_size == g["onnx_bytes"]
        assert (ort_dir / g["engine"]).stat().st_size == g["engine_bytes"]
    # fp32 for ONNX Runtime: Winograd where it pays off, which is nowhere in this tiny network
    assert m["build_flags"]["conv"] == "winograd"
    assert "DepthToSpace" not in _op_types(ort_dir / m["graphs"]["unet/32x32_b1-2"]["onnx"])


def _op_types(path):
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.slow
def test_winograd_unet_passes_parity_and_conv_direct_reexports_only_it(models, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(winograd, "MIN_REDUCED_CHANNELS", 16)  # so that the tiny network has some
    monkeypatch.setattr(winograd, "REDUCED_CHANNELS_TIMES_SIDE", 128)
    args = [
        "--engine",
        "fp32",
        "--backend",
        "onnxruntime",
        "--model",
        str(models[0]),
        "--out",
        str(tmp_path),
        "--tile",
        "44",
        "--batch",
        "1,2",
    ]  # levels 44, 22, 11: the last tiles overhang
    assert main(args) == 0
    m = read_manifest(tmp_path)
    assert "DepthToSpace" in _op_types(tmp_path / m.graphs["unet/44x44_b1-2"].onnx)  # places the output tiles
    assert "DepthToSpace" not in _op_types(tmp_path / m.graphs["encoder"].onnx)
    capsys.readouterr()
    assert parity.main([str(tmp_path)]) == 0  # fp32 limit 1e-4, batch 1 and 2
    assert "FAIL" not in capsys.readouterr().out
    assert main([*args, "--conv", "direct"]) == 0
    log = capsys.readouterr().out
    assert log.count("ONNX fp32 exported") == 1 and log.count("ONNX fp32 reused") == 4
    m = read_manifest(tmp_path)
    assert m.build_flags["conv"] == "direct"
    assert "DepthToSpace" not in _op_types(tmp_path / m.graphs["unet/44x44_b1-2"].onnx)
    assert parity.main([str(tmp_path)]) == 0


@pytest.mark.slow
def test_parity_tool_passes_and_refuses_another_model(ort_dir, models, capsys):
    assert parity.main([str(ort_dir)]) == 0
    out = capsys.readouterr().out
    # the static U-Net at batch 1 and 2, the other graphs at two sizes no power of two divides
    assert out.count(" ok") == 10 and "FAIL" not in out and "2 x 13x57" in out
    assert parity.main([str(ort_dir), "--model", str(models[1])]) == 1
    assert "is not the one" in capsys.readouterr().err


@pytest.mark.slow
def test_second_run_reuses_and_another_model_rebuilds(ort_dir, models, capsys):
    args = ["--engine", "fp32", "--backend", "onnxruntime", "--out", str(ort_dir), "--tile", "32", "--batch", "1,2"]
    assert main([*args, "--model", str(models[0])]) == 0
    log = capsys.readouterr().out
    assert log.count("reused") == 10 and "exported" not in log
    assert main([*args, "--model", str(models[1])]) == 0
    log = capsys.readouterr().out
    assert log.count("ONNX fp32 exported") == 5 and "reused" not in log
    assert read_manifest(ort_dir).model_hash == idm_rt.checkpoints.model_hash(idm_rt.load_model(models[1]))


@pytest.mark.slow
def test_fp16_without_gpu_writes_onnx_explains_and_exits_3(models, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        builder.tensorrt_build,
        "missing_requirements",
        lambda: ["an NVIDIA GPU visible to torch", "the tensorrt Python package, 10.x"],
    )
    out = tmp_path / "trt"
    rc = main(["--engine", "fp16", "--model", str(models[0]), "--out", str(out), "--tile", "32", "--force"])
    assert rc == 3
    log = capsys.readouterr().out
    assert "TensorRT engines NOT built" in log and "an NVIDIA GPU" in log and "tensorrt Python package" in log
    first = log.splitlines()[0]  # said before any graph is exported
    assert "cannot be built on this machine" in first and "an NVIDIA GPU" in first and "exit status 3" in first
    again = next(line for line in log.splitlines() if "run the same command again" in line)
    assert "python -m idm_rt.build --engine fp16" in again and "--force" not in again  # the graphs are reused
    assert "backend='onnxruntime'" in log
    m = read_manifest(out)
    assert not m.complete and m.precision == "fp16" and m.graphs["unet/32x32_b1-1"].precision == "fp16"
    assert all((out / g.onnx).exists() and g.engine is None for g in m.graphs.values())


@pytest.mark.slow
def test_tensorrt_engines_are_reused_until_gpu_or_version_changes(models, tmp_path, capsys, monkeypatch):
    """The reuse logic of the TensorRT path, with the engine build itself replaced (no TensorRT here)."""
    built = []

    def fake_build(onnx_path, engine_path, profile, fp16, workspace_mb, timing_cache):
        built.append((engine_path.name, profile))
        engine_path.parent.mkdir(parents=True, exist_ok=True)
        engine_path.write_bytes(b"engine")

    gpu = {"tensorrt": "10.3.0", "gpu": "NVIDIA H100", "compute_capability": "9.0", "cuda": "12.4"}
    monkeypatch.setattr(builder.tensorrt_build, "missing_requirements", lambda: [])
    monkeypatch.setattr(builder.tensorrt_build, "identity", lambda: dict(gpu))
    monkeypatch.setattr(builder.tensorrt_build, "build_engine", fake_build)
    args = ["--engine", "fp16", "--model", str(models[0]), "--out", str(tmp_path), "--tile", "32", "--batch", "1,4"]
    assert main(args) == 0
    assert sorted(n for n, _ in built) == [
        "conditioner.plan.partial",
        "encoder.plan.partial",
        "encoder_block.plan.partial",
        "unet_32x32_b1-4.plan.partial",
        "unet_dynamic.plan.partial",
    ]
    profiles = dict(built)
    assert profiles["unet_32x32_b1-4.plan.partial"]["x_t"] == ((1, 3, 32, 32), (4, 3, 32, 32), (4, 3, 32, 32))
    # the graphs with dynamic sizes take every tile up to the bucket, 1x1 upwards
    assert profiles["conditioner.plan.partial"]["cond"] == ((1, 3, 1, 1), (1, 3, 32, 32), (1, 3, 32, 32))
    assert profiles["unet_dynamic.plan.partial"]["x_t"] == ((1, 3, 1, 1), (4, 3, 32, 32), (4, 3, 32, 32))
    assert profiles["unet_dynamic.plan.partial"]["rows_1"] == ((1,), (32,), (32,))
    # the encoder's features take LR tiles of 512 plus 6 convolutions' reach on each side, its HR part blocks
    # of at most 256 + 2 (halo) pixels a side, whatever the image
    assert profiles["encoder.plan.partial"] == {"lr": ((1, 3, 1, 1), (1, 3, 64, 64), (1, 3, 524, 524))}
    block = profiles["encoder_block.plan.partial"]
    assert block == {
        "feat": ((1, 64, 1, 1), (1, 64, 64, 64), (1, 64, 258, 258)),
        "rows": ((1,), (258,), (258,)),
        "cols": ((1,), (258,), (258,)),
    }  # a nearest upsampler: no relative coordinates, no cell
    assert sorted(p.name for p in (tmp_path / "tensorrt").iterdir()) == [
        "conditioner.plan",
        "encoder.plan",
        "encoder_block.plan",
        "unet_32x32_b1-4.plan",
        "unet_dynamic.plan",
    ]
    assert read_manifest(tmp_path).identity == gpu
    built.clear()
    assert main(args) == 0 and built == []
    gpu["gpu"] = "NVIDIA L4"
    capsys.readouterr()
    assert main(args) == 0 and len(built) == 5
    assert capsys.readouterr().out.count("ONNX fp16 reused") == 2  # the U-Nets; engines rebuilt, ONNX kept
    built.clear()
    assert main([*args, "--force"]) == 0 and len(built) == 5


def test_missing_default_model_and_bad_arguments(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(idm_rt, "DEFAULT_MODEL", tmp_path / "absent")
    assert main(["--engine", "fp32", "--backend", "onnxruntime"]) == 1
    assert "no bundled default model" in capsys.readouterr().err
    for bad in (
        ["--scales", "2"],
        ["--tile", "x"],
        ["--batch", "4,1"],
        ["--engine", "int8"],
        ["--workspace", "1"],
        ["--conv", "winograd"],
        ["--conv", "winograd", "--backend", "onnxruntime", "--engine", "fp16"],
    ):
        with pytest.raises(SystemExit) as e:
            main(bad)
        assert e.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--conv", "winograd", "--backend", "onnxruntime", "--engine", "fp16"])
    assert "--conv winograd is for --backend onnxruntime --precision fp32" in capsys.readouterr().err


def test_explain_shows_the_bucket_of_each_request(models, capsys):
    assert (
        main(["--model", str(models[0]), "--scales", "2,3", "--input-size", "16x16", "--tile", "32", "--explain"]) == 0
    )
    out = capsys.readouterr().out
    assert "32x32_b1-1" in out and "48x48_b1-1" in out
    assert "16x16 x2: 32x32 output -> bucket 32x32_b1-1 (exact fit, its static graph)" in out
    assert idm_rt.buckets.route([idm_rt.buckets.Bucket(32, 32)], (15, 24), 8).describe() == (
        "24x15 output -> the dynamic graph at 24x15 (inside bucket 32x32_b1-1)"
    )
    assert "rule:" in out


@pytest.mark.slow
def test_a_build_that_reuses_everything_leaves_the_manifest_alone(models, tmp_path, monkeypatch):
    args = [
        "--engine",
        "fp32",
        "--backend",
        "onnxruntime",
        "--model",
        str(models[0]),
        "--out",
        str(tmp_path),
        "--tile",
        "32",
    ]
    assert main(args) == 0
    writes = []
    monkeypatch.setattr(builder._Writer, "save", lambda self: writes.append(self.manifest.complete))
    assert main(args) == 0 and writes == []  # readers of the folder never see it half-written
    assert main([*args, "--batch", "1,2"]) == 0  # the U-Net graph changes: progress kept, then complete
    assert writes[-1] is True and False in writes


@pytest.mark.slow
def test_runners_refuse_an_incomplete_directory(ort_dir, tmp_path):
    folder = tmp_path / "partial"
    shutil.copytree(ort_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["graphs"]["unet/32x32_b1-2"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="incomplete, it has no unet/32x32_b1-2"):
        load_runner(folder)


def test_builds_of_one_folder_take_turns(models, tmp_path):
    import fcntl
    import threading

    lines = []
    options = builder.BuildOptions(models[0], tmp_path, "fp32", "onnxruntime", [idm_rt.buckets.Bucket(32, 32)])
    with open(tmp_path / ".build.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another build holds the folder
        thread = threading.Thread(target=builder.build, args=(options, lines.append))
        thread.start()
        deadline = time.monotonic() + 60
        while not lines and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # had it not waited, it would be exporting by now
        assert thread.is_alive() and lines == [f"waiting for another build of {tmp_path} to finish"]
        fcntl.flock(held, fcntl.LOCK_UN)
    thread.join()
    assert lines[-1].startswith("done:") and read_manifest(tmp_path).complete


@pytest.mark.slow
def test_a_cut_short_file_is_rebuilt_and_an_interrupted_builds_files_are_removed(
    ort_dir, tmp_path, capsys, monkeypatch
):
    folder = tmp_path / "copy"
    shutil.copytree(ort_dir, folder)
    m = read_manifest(folder)
    unet = folder / m.graphs["unet/32x32_b1-2"].engine
    unet.write_bytes(unet.read_bytes()[:1000])  # an interrupted copy
    with pytest.raises(ValueError, match="incomplete copy"):
        load_runner(folder)
    theirs = folder / "onnx" / "my_own_model.onnx"  # not a file any build lists: left alone
    theirs.write_bytes(b"mine")
    args = ["--backend", "onnxruntime", "--model", m.model_path, "--out", str(folder), "--tile", "32"]
    assert main([*args, "--batch", "1,2"]) == 0  # --engine: fp32 for ONNX Runtime, as built before
    log = capsys.readouterr().out
    assert "unet/32x32_b1-2: onnxruntime artifact built" in log and log.count("reused") == 9
    load_runner(folder)
    # a build of another bucket killed while it writes the U-Net: its files are listed as pending
    real_export = builder.export_graph

    def killed(model, kind, bucket, path, *rest):
        if kind == "unet":
            Path(path).write_bytes(b"half a graph")
            raise KeyboardInterrupt
        return real_export(model, kind, bucket, path, *rest)

    monkeypatch.setattr(builder, "export_graph", killed)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--tile", "48"])
    pending = json.loads((folder / "manifest.json").read_text())["pending"]
    assert "onnx/unet_48x48_b1-1.onnx.partial" in pending and "onnx/unet_32x32_b1-2.onnx" in pending
    monkeypatch.setattr(builder, "export_graph", real_export)
    assert main([*args, "--tile", "48"]) == 0
    assert sorted(p.name for p in (folder / "onnx").iterdir()) == [
        "conditioner.onnx",
        "encoder.onnx",
        "encoder_block.onnx",
        "my_own_model.onnx",
        "unet_48x48_b1-1.onnx",
        "unet_dynamic.onnx",
    ]
    assert read_manifest(folder).pending == [] and theirs.read_bytes() == b"mine"


@pytest.mark.slow
def test_a_build_never_touches_files_it_did_not_write(models, tmp_path, capsys):
    """A non-empty folder that is not an engine directory is refused and left as it was; links out of a
    directory are refused; a file at a name a build writes that its manifest does not list is not
    overwritten."""
    args = ["--backend", "onnxruntime", "--model", str(models[0]), "--tile", "32"]
    mine = tmp_path / "P"
    for rel in ("onnx/unet_mine.onnx", "onnx/encoder.onnx", "onnxruntime/conditioner_v2.onnx"):
        (mine / rel).parent.mkdir(parents=True, exist_ok=True)
        (mine / rel).write_text("x")
    assert main([*args, "--out", str(mine)]) == 1
    assert "is not empty and is not an engine directory" in capsys.readouterr().err
    assert sorted(str(p.relative_to(mine)) for p in mine.rglob("*") if p.is_file()) == [
        "onnx/encoder.onnx",
        "onnx/unet_mine.onnx",
        "onnxruntime/conditioner_v2.onnx",
    ]
    assert all(p.read_text() == "x" for p in mine.rglob("*") if p.is_file())

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "encoder.onnx").write_text("precious")
    for parent, link in ((tmp_path / "E1", "onnx"), (tmp_path / "E2", "onnxruntime")):
        parent.mkdir()
        (parent / link).symlink_to(elsewhere)
        assert main([*args, "--out", str(parent)]) == 1
        assert "is a symbolic link" in capsys.readouterr().err
    assert (elsewhere / "encoder.onnx").read_text() == "precious" and len(list(elsewhere.iterdir())) == 1

    built = tmp_path / "B"
    assert main([*args, "--out", str(built)]) == 0
    (built / "onnx" / "encoder.onnx").unlink()
    (built / "onnx" / "encoder.onnx").symlink_to(elsewhere / "encoder.onnx")
    assert main([*args, "--out", str(built), "--force"]) == 1
    assert "is a symbolic link" in capsys.readouterr().err
    assert (elsewhere / "encoder.onnx").read_text() == "precious"
    (built / "onnx" / "encoder.onnx").unlink()
    manifest = json.loads((built / "manifest.json").read_text())
    manifest["graphs"].pop("encoder")
    (built / "manifest.json").write_text(json.dumps(manifest))
    (built / "onnx" / "encoder.onnx").write_text("a user's file at a name builds write")
    assert main([*args, "--out", str(built)]) == 1
    assert "no build of" in capsys.readouterr().err
    assert (built / "onnx" / "encoder.onnx").read_text() == "a user's file at a name builds write"

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*args, "--out", str(empty)]) == 0  # an empty folder is fine


@pytest.mark.slow
def test_an_unreadable_graph_is_reported_not_raised(ort_dir, tmp_path):
    from idm_rt.export.opcheck import check_graph

    bad = tmp_path / "cut.onnx"
    bad.write_bytes((ort_dir / "onnx" / "encoder.onnx").read_bytes()[:300])
    problems = check_graph(bad, 17)
    assert len(problems) == 1 and "cannot be read as ONNX" in problems[0] and "--force" in problems[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("buckets"), "has no buckets"),
        (lambda d: d.update(buckets=[]), "lists 0 buckets"),
        (lambda d: d.update(graphs=None), "graphs must be a JSON object"),
        (lambda d: d["graphs"]["encoder"].pop("onnx_key"), "graph 'encoder' has no onnx_key"),
        (lambda d: d.update(max_scale=1), "max_scale .* must be a finite number > 1"),
        (lambda d: d.update(max_scale="8"), "max_scale"),
        (lambda d: d.update(opset=17.5), "opset must be an integer"),
        (lambda d: d.update(backend="openvino"), "backend must be one of"),
        (lambda d: d["network"].update(norm_groups=0), "norm_groups must be an integer >= 1"),
        (lambda d: d["network"].update(inner_channel=1048576), "divisible|above the limit"),
        (lambda d: d["buckets"][0].update(height=10**9), "must be between 8x8 and 8192x8192"),
        (lambda d: d["buckets"][0].update(height="32"), "must be integers"),
        (lambda d: d["graphs"]["encoder"].update(onnx="/etc/passwd"), "not the ones a build writes"),
        (lambda d: d["graphs"]["encoder"].update(engine="../../outside.onnx"), "not the ones a build writes"),
        (lambda d: d["graphs"]["encoder"].update(onnx_bytes=-1), "onnx_bytes -1 is not of the expected type"),
        (
            lambda d: d["graphs"].update({"unet/../../x": d["graphs"]["encoder"]}),
            "a graph 'unet/../../x' that its bucket",
        ),
        (lambda d: d.update(pending=["../victim.txt"]), "not a file a build writes"),
        (lambda d: d.update(defaults={"steps": 10**9}), r"steps must be an integer in \[0, 2000\]"),
        (lambda d: d.update(defaults={"device": "cuda"}), r"unknown keys \['device'\]"),
        (lambda d: d.update(format="idm-rt-engines/9"), "written by another version of idm-rt"),
        (lambda d: d.update(format="other"), "not an idm-rt engine manifest of this version"),
        (
            lambda d: d.update(format="idm-rt-engines/2"),
            r"written by another version of idm-rt \(format 'idm-rt-engines/2'; "
            r"this one reads 'idm-rt-engines/3'\): build",
        ),
    ],
)
def test_manifest_errors_name_what_is_wrong(ort_dir, tmp_path, change, message):
    d = json.loads((ort_dir / "manifest.json").read_text())
    change(d)
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=message):
        read_manifest(tmp_path)


@pytest.mark.slow
def test_manifests_tolerate_new_fields_and_refuse_what_is_not_one(ort_dir, tmp_path):
    good = json.loads((ort_dir / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not an idm-rt engine manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="unreadable"):
        read_manifest(tmp_path)
    graphs = {k: dict(g, checksum="...") for k, g in good["graphs"].items()}
    newer = dict(good, written_by="a later idm-rt", graphs=graphs)
    (tmp_path / "manifest.json").write_text(json.dumps(newer))
    assert read_manifest(tmp_path).graphs.keys() == good["graphs"].keys()  # fields it does not know are ignored


@pytest.mark.slow
def test_a_manifest_cannot_lead_a_runner_outside_its_directory(ort_dir, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(ort_dir, folder)
    outside = tmp_path / "outside.onnx"
    shutil.copy(folder / "onnxruntime" / "encoder.onnx", outside)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["graphs"]["encoder"]["engine"] = str(outside)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not the ones a build writes"):
        idm_rt.Upscaler.from_engines(folder)
    manifest["graphs"]["encoder"]["engine"] = "onnxruntime/encoder.onnx"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "onnxruntime" / "encoder.onnx").unlink()
    (folder / "onnxruntime" / "encoder.onnx").symlink_to(outside)
    with pytest.raises(ValueError, match="is a symbolic link"):
        idm_rt.Upscaler.from_engines(folder)


@pytest.mark.slow
@pytest.mark.parametrize("version", [1, 2])
def test_a_directory_of_an_earlier_version_is_rebuilt_and_its_files_replaced(models, tmp_path, capsys, version):
    folder = tmp_path / f"v{version}"
    (folder / "onnx").mkdir(parents=True)
    (folder / "onnxruntime").mkdir()
    old = {
        "encoder": ("onnx/encoder.onnx", "onnxruntime/encoder.onnx"),
        "conditioner/32x32_b1-1": ("onnx/conditioner_32x32_b1-1.onnx", "onnxruntime/conditioner_32x32_b1-1.onnx"),
    }
    for onnx_file, engine in old.values():
        (folder / onnx_file).write_text("old")
        (folder / engine).write_text("old")
    (folder / "onnx" / "notes.txt").write_text("mine")
    graphs = {k: {"onnx": a, "engine": b, "onnx_key": "k", "precision": "fp32"} for k, (a, b) in old.items()}
    (folder / "manifest.json").write_text(json.dumps({"format": f"idm-rt-engines/{version}", "graphs": graphs}))
    assert main(["--backend", "onnxruntime", "--model", str(models[0]), "--out", str(folder), "--tile", "32"]) == 0
    assert sorted(p.name for p in (folder / "onnx").iterdir()) == [
        "conditioner.onnx",
        "encoder.onnx",
        "encoder_block.onnx",
        "notes.txt",
        "unet_32x32_b1-1.onnx",
        "unet_dynamic.onnx",
    ]
    assert (folder / "onnx" / "notes.txt").read_text() == "mine"
    load_runner(folder)


@pytest.mark.slow
def test_build_options_and_their_errors(models, tmp_path, capsys, monkeypatch):
    base = ["--backend", "onnxruntime", "--model", str(models[0])]
    assert main([*base, "--out", str(tmp_path / "m3"), "--tile", "32", "--max-scale", "3"]) == 0
    m = read_manifest(tmp_path / "m3")
    assert m.max_scale == 3 and m.precision == "fp32"
    capsys.readouterr()
    torch.manual_seed(0)
    deeper = idm_rt.save_model(
        idm_rt.IDM(
            idm_rt.IDMConfig(
                inner_channel=32, channel_multiplier=(1, 1, 1, 1), res_blocks=1, attn_levels=(), encoder_blocks=1
            )
        ),
        tmp_path / "deeper",
    )  # size multiple 8
    assert (
        main(["--backend", "onnxruntime", "--model", str(deeper), "--out", str(tmp_path / "small"), "--tile", "12"])
        == 0
    )
    assert "12x12_b1-1 is too small to tile with" in capsys.readouterr().out  # 8 < 2 x 8
    (tmp_path / "file").write_text("")
    assert main([*base, "--out", str(tmp_path / "file")]) == 1
    assert capsys.readouterr().err.startswith("error:")
    assert main(["--model", str(tmp_path / "file"), "--scales", "2", "--input-size", "8x8", "--explain"]) == 1
    assert "not a torch checkpoint file" in capsys.readouterr().err
    for bad in (["--tile", ","], ["--max-scale", "1"]):
        with pytest.raises(SystemExit) as e:
            main([*base, *bad])
        assert e.value.code == 2
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a)
    )
    assert main([*base, "--out", str(tmp_path / "no-ort")]) == 1
    assert "needs onnxruntime: pip install onnxruntime" in capsys.readouterr().err
    assert not (tmp_path / "no-ort").exists()


@pytest.mark.slow
def test_parity_says_where_the_missing_model_path_came_from(ort_dir, tmp_path, capsys):
    folder = tmp_path / "moved"
    shutil.copytree(ort_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["model_path"] = str(tmp_path / "gone")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert parity.main([str(folder)]) == 1
    err = capsys.readouterr().err
    assert "no checkpoint at" in err and "manifest records; --model PATH" in err


def test_graph_dimensions_are_sized_from_the_inputs_or_the_unet_levels():
    """What the IO-binding path and TensorRT's profiles size a graph's tensors with: a fixed size, a name an
    input has, or level i of the image, ceil(n / 2^i) (the conditioner's outputs h_1, w_1, ...)."""
    known = {"batch": 2, "h_0": 13, "w_0": 57, "out_h": 5}
    assert [dim_size(d, known) for d in ("batch", 3, "h_0", "h_1", "h_2", "w_3", "out_h")] == [2, 3, 13, 7, 4, 8, 5]
    for bad, names in (("unk__7", known), ("h_1", {"w_0": 4}), (None, known), (0, known)):
        with pytest.raises(ValueError, match="cannot size a graph dimension"):
            dim_size(bad, names)


def test_every_backend_a_build_makes_has_one_engine_builder():
    """The build dispatches on ENGINE_BUILDERS alone: one module per backend of BUILD_BACKENDS, each with the whole
    interface."""
    from idm_rt.backends import BUILD_BACKENDS
    from idm_rt.export.builder import ENGINE_BUILDERS

    assert set(ENGINE_BUILDERS) == set(BUILD_BACKENDS)
    for module in ENGINE_BUILDERS.values():
        for name in ("missing_requirements", "identity", "manifest_flags", "key_flags", "write_engine"):
            assert callable(getattr(module, name)), (module.__name__, name)
