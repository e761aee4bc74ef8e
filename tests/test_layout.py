"""featx.core.layout: every name in the cache folder is made here and parses back to the
parts it was made of, whatever the dataset is called."""

from __future__ import annotations

import pytest

from featx.core import layout
from featx.core.layout import (
    StoreName,
    belongings,
    block_file,
    block_files,
    checkpoint_files,
    checkpoint_path,
    converted_model_dir,
    converted_model_dirs,
    parse_checkpoint_name,
    parse_converted_name,
    parse_store_name,
    partial_dir,
    partial_dirs,
    partial_key,
    safe_name,
    segment_files,
    segment_name,
    segments_dir,
    shard_dir,
    store_files,
    store_path,
)

KEY = "0123456789abcdef"


def test_safe_name_keeps_letters_digits_and_dash_underscore_dot():
    assert safe_name("flowers-17_v2.0") == "flowers-17_v2.0"
    assert safe_name("../my photos/été?") == ".._my_photos_été_"  # no separator survives
    assert "/" not in safe_name("a/b\\c") and "\n" not in safe_name("a\nb")


@pytest.mark.parametrize("dataset", ["flowers17", "my-data-set", "../odd name", "a.b-c"])
def test_a_store_name_parses_back_to_its_parts(tmp_path, dataset):
    path = store_path(tmp_path, dataset, "MobileNetV2", "avg", KEY)
    assert path.parent == tmp_path and path.suffix == ".h5"
    expected = StoreName(safe_name(dataset), "MobileNetV2", "avg", KEY)
    assert parse_store_name(path.name) == expected
    # names that start with the store's: its partial folder, lock, segments
    assert parse_store_name(partial_dir(path, KEY).name) == expected
    assert parse_store_name(layout.lock_path(path).name) == expected


def test_a_name_that_is_no_store_parses_to_question_marks():
    assert parse_store_name("notes.h5") == StoreName("notes", "?", "?", "?")


def test_what_belongs_to_a_store_and_what_does_not(tmp_path):
    path = store_path(tmp_path, "shapes", "MobileNetV2", "avg", KEY)
    other = store_path(tmp_path, "shapes", "MobileNetV2", "avg", "f" * 16)
    for p in (partial_dir(path, "k1"), shard_dir(path, "k2"), partial_dir(other, "k3")):
        p.mkdir()
    mine = belongings(path)
    assert partial_dir(path, "k1") in mine and shard_dir(path, "k2") in mine
    assert partial_dir(other, "k3") not in mine
    assert {path, layout.lock_path(path), layout.verified_stamp(path),
            layout.assembling_path(path), segments_dir(path)} <= set(mine)
    assert partial_dirs(tmp_path) == sorted([partial_dir(path, "k1"), partial_dir(other, "k3")])
    assert partial_dirs(tmp_path, path) == [partial_dir(path, "k1")]
    assert partial_key(partial_dir(path, "k1")) == "k1"


def test_results_audit_and_sweep_folders_sit_beside_the_store(tmp_path):
    path = store_path(tmp_path, "a.b", "ResNet50", "max", KEY)
    stem = f"a.b-ResNet50-max-{KEY}"
    assert layout.runs_dir(path) == tmp_path / f"{stem}.runs"
    assert layout.audit_dir(path) == tmp_path / f"{stem}.audit"
    assert layout.sweep_dir(path) == tmp_path / f"{stem}.sweep"


def test_numbered_files_list_in_their_order(tmp_path):
    for i in (10, 2, 0):
        block_file(tmp_path, i).write_bytes(b"")
    (tmp_path / "block-x.txt").write_bytes(b"")
    assert [p.name for p in block_files(tmp_path)] == \
        ["block-000000.npz", "block-000002.npz", "block-000010.npz"]
    assert layout.shard_file(tmp_path, 3).name == "shard-00003.h5"
    store = tmp_path / "s.h5"
    segments_dir(store).mkdir()
    for i in (11, 1):
        (segments_dir(store) / segment_name(i)).write_bytes(b"")
    assert [p.name for p in segment_files(store)] == ["seg-001.h5", "seg-011.h5"]


def test_stores_are_the_h5_files_of_the_folder(tmp_path):
    store = store_path(tmp_path, "d", "B", "avg", KEY)
    store.write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    assert store_files(tmp_path) == [store]


def test_converted_model_names_parse_back(tmp_path):
    folder = converted_model_dir(tmp_path, "Efficient/Net", 16, "abc")
    assert folder == tmp_path / "openvino" / "Efficient_Net-b16-abc"
    assert parse_converted_name(folder.name) == ("Efficient_Net", 16, "abc")
    for temporary in (".Efficient_Net-b16-abc.x1y2", "stray", "Net-bx-abc"):
        assert parse_converted_name(temporary) == ("?", 0, temporary)
    assert converted_model_dirs(tmp_path) == []
    folder.mkdir(parents=True)
    (folder.parent / "stray.txt").write_bytes(b"")
    assert converted_model_dirs(tmp_path) == [folder]


def test_fine_tuning_checkpoints_parse_back(tmp_path):
    path = checkpoint_path(tmp_path, "my data", "ResNet50", KEY)
    assert path.name == f"my_data-ResNet50-finetune-{KEY}.ckpt"
    assert parse_checkpoint_name(path.name) == StoreName("my_data", "ResNet50", "finetune", KEY)
    path.write_bytes(b"")
    store_path(tmp_path, "my data", "ResNet50", "avg", KEY).write_bytes(b"")
    assert checkpoint_files(tmp_path) == [path]
    assert layout.finetune_runs_dir(tmp_path, "my data", "ResNet50") == \
        tmp_path / "my_data-ResNet50-finetune.runs"


def test_transform_manifests_are_named_by_their_digest(tmp_path):
    assert layout.transform_manifest(tmp_path, "d1") == \
        tmp_path / "transform-manifests" / "transform-d1.csv"


def test_a_hub_backbone_and_pooling_make_a_plain_file_name(tmp_path):
    """``hub:<preset>`` and ``cls+mean`` hold characters some file systems refuse (":" on
    Windows): each part of a cache name is written as a plain name."""
    from featx.core.layout import checkpoint_path, finetune_runs_dir, parse_store_name, store_path

    path = store_path(tmp_path, "flowers", "hub:dinov2_small", "cls+mean", "0123abcd")
    assert path.name == "flowers-hub_dinov2_small-cls_mean-0123abcd.h5"
    assert parse_store_name(path.name).backbone == "hub_dinov2_small"
    for made in (checkpoint_path(tmp_path, "flowers", "hub:vit", "k"),
                 finetune_runs_dir(tmp_path, "flowers", "hub:vit")):
        assert ":" not in made.name and made.parent == tmp_path
    # keras.applications names and poolings are plain already: their stores keep their names
    assert store_path(tmp_path, "d", "MobileNetV2", "avg", "k").name == "d-MobileNetV2-avg-k.h5"
