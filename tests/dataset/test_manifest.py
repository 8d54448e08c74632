import logging
import subprocess
import sys

import numpy as np
import pytest

from multistream.dataset.manifest import VideoEntry, build_manifest, main
from multistream.store import storage
from tests.support.helpers import write_test_video

UCF_FILES = (
    "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
    "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c02.avi",
    "ApplyEyeMakeup/v_ApplyEyeMakeup_g15_c01.avi",
    "HandstandPushups/v_HandStandPushups_g07_c03.avi",  # UCF101 spells the folder and the file differently
    "HandstandPushups/v_HandStandPushups_g22_c01.avi",
)


def make_tree(root, names, data=b"video bytes are not read"):
    for name in names:
        storage.write_bytes(storage.join(str(root), name), data)
    return str(root)


def by_id(entries):
    return {e.video_id: (e.label, e.split) for e in entries}


def test_ucf101_layout_and_splits(tmp_path):
    root = make_tree(tmp_path / "ucf", UCF_FILES + ("classInd.txt",))
    entries = build_manifest(root)
    assert [e.video_id for e in entries] == sorted(UCF_FILES)
    assert entries[0] == VideoEntry(UCF_FILES[0], f"{root}/{UCF_FILES[0]}", "ApplyEyeMakeup", "test")
    assert by_id(entries) == {
        UCF_FILES[0]: ("ApplyEyeMakeup", "test"),
        UCF_FILES[1]: ("ApplyEyeMakeup", "train"),
        UCF_FILES[2]: ("ApplyEyeMakeup", "train"),
        UCF_FILES[3]: ("HandstandPushups", "test"),
        UCF_FILES[4]: ("HandstandPushups", "train"),
    }
    assert [e.split for e in build_manifest(root, split=2)] == ["train", "test", "train", "train", "train"]
    assert [e.split for e in build_manifest(root, split=3)] == ["train", "train", "test", "train", "train"]
    with pytest.raises(ValueError, match="split"):
        build_manifest(root, split=4)


def test_other_files_take_their_folder_as_label(tmp_path):
    root = make_tree(tmp_path, ("cats/one.mp4", "dogs/park/two.MKV", "loose.mov", "v_Flat_g03_c01.avi"))
    assert by_id(build_manifest(root)) == {
        "cats/one.mp4": ("cats", None),
        "dogs/park/two.MKV": ("park", None),
        "loose.mov": (None, None),
        "v_Flat_g03_c01.avi": ("Flat", "test"),
    }
    single = build_manifest(f"{root}/cats/one.mp4")
    assert [(e.video_id, e.uri) for e in single] == [("one.mp4", f"{root}/cats/one.mp4")]


def test_csv_manifest(tmp_path, caplog):
    root = make_tree(tmp_path / "in", ("a/x.mp4", "b/y.avi", "z.mkv", "unlisted.mp4"))
    outside = make_tree(tmp_path / "elsewhere", ("far.mp4",))
    csv_uri = str(tmp_path / "labels.csv")
    storage.write_text(csv_uri, "\n".join([
        "path,label,split",
        "a/x.mp4,walk,train",
        "b/y.avi,run,Test",
        "z.mkv,,",
        "missing.mp4,walk,train",
        f"{outside}/far.mp4,odd,anomaly",
        "a/x.mp4,walk,train",
    ]) + "\n")
    with caplog.at_level(logging.WARNING):
        entries = build_manifest(root, labels=csv_uri)
    assert by_id(entries) == {
        "a/x.mp4": ("walk", "train"),
        "b/y.avi": ("run", "test"),
        "z.mkv": (None, None),
        f"{outside}/far.mp4": ("odd", "anomaly"),
    }
    assert "missing.mp4" in caplog.text and "listed twice" in caplog.text

    for column in ("uri", "file"):
        storage.write_text(csv_uri, f"{column},label\nz.mkv,idle\n")
        assert by_id(build_manifest(root, labels=csv_uri)) == {"z.mkv": ("idle", None)}
    storage.write_text(csv_uri, "name,label\nz.mkv,idle\n")
    with pytest.raises(ValueError, match="uri"):
        build_manifest(root, labels=csv_uri)
    storage.write_text(csv_uri, "uri,label,split\nz.mkv,idle,validation\n")
    with pytest.raises(ValueError, match="line 2"):
        build_manifest(root, labels=csv_uri)


def test_labels_csv_inside_input_wins_over_names(tmp_path):
    root = make_tree(tmp_path, ("Walk/v_Walk_g01_c01.avi", "Walk/v_Walk_g09_c01.avi"))
    assert by_id(build_manifest(root))["Walk/v_Walk_g01_c01.avi"] == ("Walk", "test")
    storage.write_text(f"{root}/labels.csv", "uri,label,split\nWalk/v_Walk_g01_c01.avi,Stroll,train\n")
    assert by_id(build_manifest(root)) == {"Walk/v_Walk_g01_c01.avi": ("Stroll", "train")}


def test_ucf101_split_files(tmp_path):
    root = make_tree(tmp_path / "videos", UCF_FILES + ("Extra/v_Extra_g01_c01.avi",))
    splits = str(tmp_path / "ucfTrainTestlist")
    storage.write_text(f"{splits}/classInd.txt", "1 ApplyEyeMakeup\r\n37 HandstandPushups\r\n")
    storage.write_text(f"{splits}/trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c02.avi 1\r\n"
                                                   "HandstandPushups/v_HandStandPushups_g22_c01.avi 37\r\n")
    storage.write_text(f"{splits}/testlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n"
                                                  "HandstandPushups/v_HandStandPushups_g07_c03.avi\r\n")
    storage.write_text(f"{splits}/trainlist02.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\n")
    storage.write_text(f"{splits}/testlist02.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c02.avi\n")
    assert by_id(build_manifest(root, labels=splits)) == {
        UCF_FILES[0]: ("ApplyEyeMakeup", "test"),
        UCF_FILES[1]: ("ApplyEyeMakeup", "train"),
        UCF_FILES[2]: ("ApplyEyeMakeup", None),  # in neither list
        UCF_FILES[3]: ("HandstandPushups", "test"),
        UCF_FILES[4]: ("HandstandPushups", "train"),
        "Extra/v_Extra_g01_c01.avi": ("Extra", None),
    }
    split2 = by_id(build_manifest(root, labels=splits, split=2))
    assert split2[UCF_FILES[0]] == ("ApplyEyeMakeup", "train") and split2[UCF_FILES[1]][1] == "test"
    with pytest.raises(ValueError, match="trainlist03"):
        build_manifest(root, labels=splits, split=3)


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist") as missing:
        build_manifest(str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(missing.value)
    make_tree(tmp_path / "docs", ("readme.txt",))
    with pytest.raises(ValueError, match="no videos"):
        build_manifest(str(tmp_path / "docs"))
    with pytest.raises(ValueError, match="labels"):
        build_manifest(make_tree(tmp_path / "v", ("a.mp4",)), labels=str(tmp_path / "none.csv"))


def test_manifest_on_s3(s3_bucket):
    prefix = f"{s3_bucket}/ucf101/"
    make_tree(prefix, UCF_FILES[:2])
    entries = build_manifest(prefix)
    assert [(e.video_id, e.uri, e.split) for e in entries] == [
        (UCF_FILES[0], f"{s3_bucket}/ucf101/{UCF_FILES[0]}", "test"),
        (UCF_FILES[1], f"{s3_bucket}/ucf101/{UCF_FILES[1]}", "train"),
    ]
    storage.write_text(f"{prefix}labels.csv", f"uri,label\n{UCF_FILES[1]},Makeup\n")
    assert by_id(build_manifest(prefix)) == {UCF_FILES[1]: ("Makeup", None)}


def test_cli(tmp_path, capsys):
    root = make_tree(tmp_path, ("Walk/v_Walk_g01_c01.avi", "misc/clip.mp4"))
    main([root])
    assert capsys.readouterr().out.splitlines() == [
        "video_id,label,split", "Walk/v_Walk_g01_c01.avi,Walk,test", "misc/clip.mp4,misc,"]
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nowhere")])
    assert "does not exist" in capsys.readouterr().err
    done = subprocess.run([sys.executable, "-m", "multistream.dataset.manifest", root, "--split", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.splitlines()[1] == "Walk/v_Walk_g01_c01.avi,Walk,test"


def ucf_names(classes=("Walk", "Run", "Jump"), groups=range(1, 26), clips=3):
    return tuple(f"{c}/v_{c}_g{g:02d}_c{k:02d}.avi" for c in classes for g in groups for k in range(1, clips + 1))


def test_validation_is_carved_from_train_by_whole_groups_in_every_class(tmp_path):
    from multistream.config import ValidationConfig
    from multistream.dataset.splits import group_of

    root = make_tree(tmp_path / "ucf", ucf_names())
    plain = build_manifest(root)
    entries = build_manifest(root, validation=ValidationConfig(fraction=0.15, seed=0))
    assert [e.video_id for e in entries] == [e.video_id for e in plain]
    before, after = {e.video_id: e.split for e in plain}, {e.video_id: e.split for e in entries}
    moved = {v for v in after if after[v] != before[v]}
    assert moved and all(before[v] == "train" and after[v] == "val" for v in moved)  # test never touched
    for label in ("Walk", "Run", "Jump"):  # 18 train groups a class: round(0.15 * 18) = 3 of them to val
        val_groups = {group_of(e) for e in entries if e.label == label and e.split == "val"}
        assert len(val_groups) == 3
    sides = {}
    for e in entries:
        if e.split in ("train", "val"):
            sides.setdefault(group_of(e), set()).add(e.split)
    assert all(len(s) == 1 for s in sides.values())  # no group straddles train and val

    again = build_manifest(root, validation=ValidationConfig(fraction=0.15, seed=0))
    assert again == entries  # deterministic
    other = build_manifest(root, validation=ValidationConfig(fraction=0.15, seed=1))
    assert {e.video_id for e in other if e.split == "val"} != {e.video_id for e in entries if e.split == "val"}
    assert build_manifest(root, validation=ValidationConfig(fraction=0.0)) == plain


def test_small_classes_still_get_val_and_keep_train(tmp_path):
    from multistream.config import ValidationConfig

    names = ("A/v_A_g08_c01.avi", "A/v_A_g09_c01.avi", "B/v_B_g10_c01.avi")  # A: 2 train groups, B: 1
    entries = build_manifest(make_tree(tmp_path / "u", names), validation=ValidationConfig(fraction=0.15))
    splits = sorted(e.split for e in entries if e.label == "A")
    assert splits == ["train", "val"] and [e.split for e in entries if e.label == "B"] == ["train"]


def test_csv_group_column_and_own_val_split_are_honoured(tmp_path):
    from multistream.config import ValidationConfig
    from multistream.dataset.splits import carve_validation

    names = [f"c{c}/v{i}.mp4" for c in range(2) for i in range(12)]
    root = make_tree(tmp_path / "in", names)
    rows = [f"{n},class{n[1]},train,src{n[1]}_{int(n.split('v')[1][:-4]) // 3}" for n in names]  # groups of 3
    storage.write_text(f"{root}/labels.csv", "uri,label,split,group\n" + "\n".join(rows) + "\n")
    entries = build_manifest(root, validation=ValidationConfig(fraction=0.25, seed=3))
    for c in range(2):
        val = [e for e in entries if e.label == f"class{c}" and e.split == "val"]
        assert len(val) == 3 and len({e.group for e in val}) == 1  # one whole group of 4
    storage.write_text(f"{root}/labels.csv", "uri,label,split\nc0/v0.mp4,a,val\nc0/v1.mp4,a,train\n"
                       "c0/v2.mp4,a,train\nc1/v0.mp4,b,test\n")
    own = build_manifest(root, validation=ValidationConfig(fraction=0.5))
    assert by_id(own) == {"c0/v0.mp4": ("a", "val"), "c0/v1.mp4": ("a", "train"), "c0/v2.mp4": ("a", "train"),
                          "c1/v0.mp4": ("b", "test")}  # its own val: nothing carved
    assert carve_validation(own, 0.5) == own


def test_manifest_cli_prints_the_val_split(tmp_path):
    root = make_tree(tmp_path / "ucf", ucf_names(classes=("Walk",)))
    out = subprocess.run([sys.executable, "-m", "multistream.dataset.manifest", root], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    splits = [line.rsplit(",", 1)[1] for line in out[1:]]
    assert out[0] == "video_id,label,split" and splits.count("val") == 3 * 3 and "test" in splits
    none = subprocess.run([sys.executable, "-m", "multistream.dataset.manifest", root, "--val-fraction", "0"],
                          capture_output=True, text=True, check=True).stdout
    assert ",val" not in none


def test_a_million_line_listing_streams(tmp_path):
    from multistream.store.storage import iter_files

    root = make_tree(tmp_path / "s", ("b/2.mp4", "a/1.mp4", ".hidden/x.mp4", "a/notes.txt"))
    stream = iter_files(root)
    assert next(stream).endswith("a/1.mp4")  # a generator: nothing listed ahead of what is read
    assert [p.rsplit("/", 2)[-2] for p in [*stream]] == ["b"]


def test_group_folds_keep_each_ucf101_group_in_one_fold():
    from multistream.dataset.splits import group_folds

    ids = [f"v_Archery_g{g:02d}_c{c:02d}.avi" for g in range(1, 11) for c in range(1, 4)] + ["clip_a", "clip_b"]
    folds = group_folds(ids, 4, seed=0)
    assert folds.shape == (32,) and set(folds.tolist()) == {0, 1, 2, 3}
    for g in range(10):
        assert len(set(folds[3 * g:3 * g + 3].tolist())) == 1  # a group's clips share their fold
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 3  # fold sizes differ by about one group (3 clips)
    np.testing.assert_array_equal(folds, group_folds(ids, 4, seed=0))
    assert not np.array_equal(folds, group_folds(ids, 4, seed=1))


def test_labels_past_the_dataset_limits_are_refused_in_one_line(tmp_path):
    from multistream.config import DatasetConfig

    names = [f"c{i:04d}.mp4" for i in range(1002)]
    root = make_tree(tmp_path / "in", names)
    csv_uri = str(tmp_path / "labels.csv")
    rows = [f"{name},class{i},train" for i, name in enumerate(names[:1001])] + [f"{names[1001]},odd,anomaly"]
    storage.write_text(csv_uri, "uri,label,split\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"1001 classes, more than dataset.max_classes \(1000\)$"):
        build_manifest(root, labels=csv_uri)
    assert len(build_manifest(root, labels=csv_uri, limits=DatasetConfig(max_classes=1001))) == 1002  # anomaly apart

    storage.write_text(csv_uri, f"uri,label\nc0000.mp4,{'x' * 201}\nc0001.mp4,walk\n")
    with pytest.raises(ValueError, match=r"label of c0000.mp4 has 201 characters, more than "
                                         r"dataset.max_label_chars \(200\)") as refused:
        build_manifest(root, labels=csv_uri)
    assert "xxx" not in str(refused.value)
    storage.write_text(csv_uri, f"uri,label\nc0000.mp4,walk\nc0001.mp4,{'y' * 10_000_000}\n")  # 10 MB
    with pytest.raises(ValueError, match=r"labels.csv line 3: a field longer than 131072 characters$") as refused:
        build_manifest(root, labels=csv_uri)
    assert "\n" not in str(refused.value) and refused.value.__cause__ is None
    # a layout's folders are labels too
    long_folder = make_tree(tmp_path / "tree", (f"{'z' * 250}/v.mp4",))
    with pytest.raises(ValueError, match="dataset.max_label_chars"):
        build_manifest(long_folder)


@pytest.mark.parametrize("name", ["../outside.mp4", "/etc/passwd.mp4", "s3://other-bucket/x.mp4",
                                  "http://169.254.169.254/latest/meta-data.mp4", "sub/../../up.mp4"])
def test_a_labels_csv_inside_the_input_may_name_only_videos_under_it(tmp_path, name):
    archive = tmp_path / "archive"
    archive.mkdir()
    write_test_video(archive / "in.mp4", frames=5)
    write_test_video(tmp_path / "outside.mp4", frames=5)
    (archive / "labels.csv").write_text(f"uri,label\nin.mp4,a\n{name},b\n")
    with pytest.raises(ValueError, match="outside the input"):
        build_manifest(str(archive))
    entries = build_manifest(str(archive), allow_outside_input=True)  # declared: read as it is (missing: skipped)
    assert "in.mp4" in {e.video_id for e in entries}


def test_a_manifest_the_user_names_may_name_any_place(tmp_path):
    archive, elsewhere = tmp_path / "archive", tmp_path / "elsewhere"
    archive.mkdir(), elsewhere.mkdir()
    write_test_video(archive / "in.mp4", frames=5)
    write_test_video(elsewhere / "out.mp4", frames=5)
    labels = tmp_path / "mine.csv"
    labels.write_text(f"uri,label\nin.mp4,a\n{elsewhere / 'out.mp4'},b\n")
    assert {e.label for e in build_manifest(str(archive), str(labels))} == {"a", "b"}
