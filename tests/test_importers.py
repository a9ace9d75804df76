"""parl_core.importers: members from the DVERGE and TRS layouts (state dicts the tests
generate from a re-statement of their published ResNet20) give the same logits as the
reference-layout models; code in a pickle is refused and never runs; unknown, missing
and mis-shaped keys are listed; normalisation comes from the file, the layout or the
override; the result saves and loads as an ordinary checkpoint."""
import hashlib
import io
import pickle

import pytest
import torch

import parl_core as pc
from parl_core.importers import REFERENCE_CIFAR10_MEAN, REFERENCE_CIFAR10_STD, import_members
from import_helpers import DvergeWrapper, RefResNet20, TrsNormalize, randomise

X = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
DV_MEAN, DV_STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


def _dverge_refs(n=2):
    return [DvergeWrapper(randomise(RefResNet20(), 10 + i), DV_MEAN, DV_STD).eval() for i in range(n)]


def _save(path, obj):
    torch.save(obj, path)
    return path


def _logits_equal(ens, refs, x=X):
    with torch.no_grad():
        for m, ref in zip(ens.members, refs):
            torch.testing.assert_close(m(x), ref(x), rtol=1e-4, atol=1e-5)


def test_dverge_file_with_all_members_gives_the_reference_logits(tmp_path):
    refs = _dverge_refs(2)
    f = _save(tmp_path / "epoch_200.pth", {f"model_{i}": r.state_dict() for i, r in enumerate(refs)})
    ens, meta = import_members([f], "dverge")
    assert len(ens.members) == 2
    _logits_equal(ens, refs)
    imp = meta["imported"]
    assert imp["layout"] == "dverge" and imp["normalize_source"] == ["file", "file"]
    assert imp["files"] == [{"name": "epoch_200.pth", "members": 2,
                             "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}]
    assert ["model.layer2.0.downsample.0", "blocks.3.short.0"] in imp["renames"]
    assert ens.members[0].config["mean"] == pytest.approx(DV_MEAN)
    # an ordinary checkpoint: saved, validated, loaded, same logits
    ckpt = pc.save_checkpoint(tmp_path / "dv.safetensors", ens, meta)
    back, meta2 = pc.load_checkpoint(ckpt)
    _logits_equal(back, refs)
    assert meta2["imported"]["layout"] == "dverge" and meta2["dataset"] == "cifar10"


def test_dverge_one_file_per_member_dataparallel_and_default_normalisation(tmp_path):
    refs = _dverge_refs(2)
    files = []
    for i, r in enumerate(refs):
        sd = {k: v for k, v in r.state_dict().items() if not k.startswith("normalizer.")}
        files.append(_save(tmp_path / f"m{i}.pt", {"state_dict": {f"module.{k}": v for k, v in sd.items()}}))
    ens, meta = import_members(files, "dverge")
    assert meta["imported"]["normalize_source"] == ["dverge default"] * 2
    assert ens.members[1].config["std"] == pytest.approx(REFERENCE_CIFAR10_STD)
    refs_default = [DvergeWrapper(r.model, REFERENCE_CIFAR10_MEAN, REFERENCE_CIFAR10_STD).eval() for r in refs]
    _logits_equal(ens, refs_default)


def test_trs_layout_checkpoint_files(tmp_path):
    """TRS saves {'epoch', 'arch', 'state_dict': DataParallel(Sequential(NormalizeLayer,
    resnet)).state_dict(), 'optimizer'} per member."""
    refs = [torch.nn.Sequential(TrsNormalize(REFERENCE_CIFAR10_MEAN, REFERENCE_CIFAR10_STD),
                                randomise(RefResNet20(), 20 + i)).eval() for i in range(3)]
    opt = torch.optim.Adam(refs[0].parameters()).state_dict()
    files = [_save(tmp_path / f"checkpoint.pth.tar.{i}",
                   {"epoch": 120, "arch": "cifar_resnet20", "optimizer": opt,
                    "state_dict": {f"module.{k}": v for k, v in r.state_dict().items()}})
             for i, r in enumerate(refs)]
    ens, meta = import_members(files, "trs", method="trs")
    _logits_equal(ens, refs)
    assert meta["method"] == "trs" and meta["imported"]["normalize_source"] == ["trs default"] * 3
    assert ["1.layer3.2.bn2", "blocks.8.bn_b"] in meta["imported"]["renames"]
    with pytest.raises(ValueError, match="--normalize"):
        import_members(files[:1], "trs", dataset="cifar100")


def _evil_payload(marker):
    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # unpickling would create the marker file
    return Evil()


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_pickle_with_code_is_refused_and_runs_nothing(tmp_path, how):
    marker = tmp_path / "pwned"
    f = tmp_path / "evil.pth"
    sd = RefResNet20().state_dict()
    if how == "torch.save":
        torch.save({"state_dict": sd, "extra": _evil_payload(marker)}, f)
    else:
        f.write_bytes(pickle.dumps({"state_dict": {"w": [1.0]}, "extra": _evil_payload(marker)}, protocol=2))
    assert not marker.exists()
    with pytest.raises(ValueError, match="refused.*GLOBAL .*open.*never runs code"):
        import_members([f], "trs")
    assert not marker.exists()


def test_unknown_missing_and_misshapen_keys_are_listed(tmp_path):
    sd = {f"model.{k}": v for k, v in randomise(RefResNet20(), 1).state_dict().items()}
    del sd["model.layer2.1.bn1.running_var"]
    sd["model.layer4.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    sd["model.extra_head.weight"] = torch.zeros(2)
    sd["model.fc.weight"] = torch.zeros(7, 64)
    f = _save(tmp_path / "bad.pth", sd)
    with pytest.raises(ValueError) as e:
        import_members([f], "dverge")
    msg = str(e.value)
    assert "unknown keys (2): model.layer4.0.conv1.weight, model.extra_head.weight" in msg
    assert "missing keys (1): blocks.4.bn_a.running_var" in msg
    assert "model.fc.weight -> fc.weight: file [7, 64], resnet20 needs [10, 64]" in msg


def test_missing_counters_are_filled_and_junk_is_refused(tmp_path):
    ref = randomise(RefResNet20(), 3)
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    _, meta = import_members([_save(tmp_path / "old.pth", sd)], "trs")
    assert meta["imported"]["filled_counters"] == 21  # 19 BN + 2 shortcut BN
    (tmp_path / "junk.pth").write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="junk.pth: cannot be read"):
        import_members([tmp_path / "junk.pth"], "trs")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        import_members([tmp_path / "nope.pth"], "trs")
    with pytest.raises(ValueError, match="no state dict found"):
        import_members([_save(tmp_path / "list.pth", [1, 2, 3])], "trs")


def test_normalize_override_and_parameter_checks(tmp_path):
    refs = _dverge_refs(1)
    f = _save(tmp_path / "a.pth", refs[0].state_dict())
    ens, meta = import_members([f], "dverge", normalize=([0.1, 0.2, 0.3], [0.5]))
    assert ens.members[0].config["mean"] == pytest.approx([0.1, 0.2, 0.3])
    assert ens.members[0].config["std"] == pytest.approx([0.5] * 3)
    assert meta["imported"]["normalize_source"] == ["option"]
    for kw, msg in [({"layout": "keras"}, "layout must be one of"),
                    ({"layout": "dverge", "arch": "smallcnn"}, "arch must be 'resnet20'"),
                    ({"layout": "dverge", "normalize": ([0.1, 0.2], [1, 1])}, "normalize needs 3"),
                    ({"layout": "dverge", "normalize": ([0, 0, 0], [1, 0, 1])}, "std > 0"),
                    ({"layout": "dverge", "dataset": "mnist"}, "dataset must be one of"),
                    ({"layout": "dverge", "method": "sgd"}, "method must be one of")]:
        with pytest.raises(ValueError, match=msg):
            import_members([f], **kw)
    with pytest.raises(ValueError, match="non-empty list"):
        import_members(str(f), "dverge")


def test_parl_and_state_dict_layouts(tmp_path):
    ens0 = pc.build_ensemble("smallcnn", 2, pc.load_dataset("digits", "test"), seed=3)
    ens0.eval()
    f = _save(tmp_path / "ens.pth", ens0.state_dict())  # "members.<i>." keys: two members
    ens, meta = import_members([f], "parl", arch="smallcnn", dataset="digits")
    x = torch.rand(5, 1, 8, 8)
    _logits_equal(ens, list(ens0.members), x)
    assert meta["imported"]["normalize_source"] == ["file", "file"]
    # keys already the lab's, no mean/std: the inputs are taken as they are unless --normalize
    sd = {k: v for k, v in ens0.members[0].state_dict().items() if k not in ("mean", "std")}
    g = _save(tmp_path / "plain.pth", sd)
    ens2, meta2 = import_members([g], "state-dict", arch="smallcnn", dataset="digits")
    assert meta2["imported"]["normalize_source"] == ["none"] and ens2.members[0].config["std"] == [1.0]
    with pytest.raises(ValueError, match="'parl' state dict holds 'mean' and 'std'"):
        import_members([g], "parl", arch="smallcnn", dataset="digits")
    # uploads arrive as (name, bytes)
    _, meta3 = import_members([("up.pth", f.read_bytes())], "parl", arch="smallcnn", dataset="digits")
    assert meta3["imported"]["files"][0]["name"] == "up.pth"


def test_a_safetensors_file_is_pointed_to_the_checkpoint_upload(tmp_path):
    ens = pc.build_ensemble("smallcnn", 1, pc.load_dataset("digits", "test"))
    ck = pc.save_checkpoint(tmp_path / "c.safetensors", ens, {"dataset": "digits"})
    with pytest.raises(ValueError, match="safetensors file"):
        import_members([ck], "parl", arch="smallcnn", dataset="digits")
    buf = io.BytesIO()
    torch.save({"model": {"not": "tensors"}}, buf)
    with pytest.raises(ValueError, match="no state dict found"):
        import_members([("x.pth", buf.getvalue())], "parl", arch="smallcnn", dataset="digits")


def test_cli_import_writes_a_checkpoint(tmp_path, capsys):
    from parl_core.cli import main
    refs = _dverge_refs(3)
    f = _save(tmp_path / "epoch_200.pth", {f"model_{i}": r.state_dict() for i, r in enumerate(refs)})
    out = tmp_path / "dv.safetensors"
    assert main(["import", str(f), "--layout", "dverge", "--method", "dverge", "--arch", "resnet20",
                 "--dataset", "cifar10", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 x resnet20 (DVERGE, cifar10) from dverge layout" in text and "(file)" in text
    ens, meta = pc.load_checkpoint(out)
    _logits_equal(ens, refs)
    assert meta["method"] == "dverge"
    # exists -> refused without --force; --normalize overrides
    with pytest.raises(SystemExit, match="exists"):
        main(["import", str(f), "--layout", "dverge", "--method", "dverge", "--out", str(out)])
    assert main(["import", str(f), "--layout", "dverge", "--method", "dverge", "--out", str(out),
                 "--force", "--normalize", "0.5,0.5,0.5", "0.25"]) == 0
    assert pc.read_metadata(out)["model"]["std"] == [0.25] * 3
    with pytest.raises(SystemExit, match="give --layout"):
        main(["import", str(f), "--method", "dverge", "--out", str(tmp_path / "x.safetensors")])


def test_cli_import_refuses_code_with_a_message(tmp_path, capsys):
    from parl_core.cli import main
    marker = tmp_path / "pwned"
    f = tmp_path / "evil.pth"
    torch.save({"state_dict": RefResNet20().state_dict(), "x": _evil_payload(marker)}, f)
    assert main(["import", str(f), "--layout", "trs", "--method", "ce_only",
                 "--out", str(tmp_path / "e.safetensors")]) == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "e.safetensors").exists()
