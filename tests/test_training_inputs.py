"""Training inputs that are wrong are named before training starts: caches, media folders, bad rows."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from anyany.cli import main as cli


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    """Two caption files, each with its media in its own folder (as the reference keeps them)."""
    root = tmp_path_factory.mktemp("two")
    for name, colours in (("a", ("red", "blue")), ("b", ("green", "yellow"))):
        (root / f"{name}_media").mkdir()
        rows = []
        for i, colour in enumerate(colours):
            Image.new("RGB", (40, 32), {"red": (230, 30, 30), "blue": (30, 30, 230), "green": (30, 200, 30),
                                        "yellow": (230, 230, 30)}[colour]).save(root / f"{name}_media" / f"{colour}.png")
            rows.append({"caption": f"a {colour} square", "id": str(i), "image_name": f"{colour}.png"})
        (root / f"{name}.json").write_text(json.dumps(rows))
    return root


def _train(root, out, *extra):
    return cli(["train", "stage1", "--out", str(out), "--max-steps", "1", "--batch-size", "2", "--quiet", *extra])


def test_each_dataset_has_its_own_media_folder(two_datasets, tmp_path, capsys):
    rc = _train(two_datasets, tmp_path / "run", "--data", f"{two_datasets / 'a.json'}:{two_datasets / 'a_media'}",
                "--data", f"{two_datasets / 'b.json'}:{two_datasets / 'b_media'}")
    assert rc == 0, capsys.readouterr().err
    # without the folders the media are not found, and the message says which file
    rc = _train(two_datasets, tmp_path / "run2", "--data", str(two_datasets / "a.json"))
    assert rc == 2 and "a.json" in capsys.readouterr().err


def test_a_missing_media_file_names_the_flags_that_fix_it(two_datasets, tmp_path, capsys):
    from training.records import DataFormatError, read_caption_pairs

    data = two_datasets / "a.json"  # its images are in a_media/, not next to it
    with pytest.raises(DataFormatError, match="pass check_files=False"):  # the Python API names its argument
        read_caption_pairs(data)
    remedy = f"give the folder the media are in: --data {data}:FOLDER or --media-root FOLDER"
    for argv, skip in (
        (["train", "stage1", "--data", str(data), "--out", str(tmp_path / "run"), "--max-steps", "1", "--quiet"], True),
        (["train", "stage1", "--data", f"{data}:{two_datasets / 'a_media'}", "--eval-data", str(data),
          "--out", str(tmp_path / "run"), "--max-steps", "1", "--quiet"], True),
        (["cache-features", "media", "--data", str(data), "--out", str(tmp_path / "cache"), "--quiet"], False),
    ):
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert 'a.json row 0: field "image_name" names a missing file ' in err, err
        assert "check_files" not in err, err
        flag = "--eval-data" if "--eval-data" in argv else "--data"
        assert remedy.replace("--data", flag, 1) in err, err
        assert ("--skip-bad-rows" in err) == skip, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["--media-cache", "--target-cache", "--prefix-cache"])
def test_a_cache_flag_pointing_at_something_else_is_refused(flag, two_datasets, tmp_path, capsys):
    not_a_cache = tmp_path / "photos"
    not_a_cache.mkdir()
    (not_a_cache / "x.txt").write_text("hello")
    for folder, needle in ((not_a_cache, "not an anyany"), (tmp_path / "missing", "no such folder")):
        stage = "stage2" if flag == "--prefix-cache" else "stage1"
        rc = cli(["train", stage, "--out", str(tmp_path / "run"), "--max-steps", "1", "--quiet", flag, str(folder),
                  "--data", f"{two_datasets / 'a.json'}:{two_datasets / 'a_media'}"])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and str(folder) in err and "cache-features" in err, err
        assert not (tmp_path / "run" / "final").exists()


def test_bad_rows_are_found_before_training_and_skipped_on_request(two_datasets, tmp_path, capsys):
    media = tmp_path / "media"
    media.mkdir()
    for f in (two_datasets / "a_media").iterdir():
        (media / f.name).write_bytes(f.read_bytes())
    (media / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    rows = json.loads((two_datasets / "a.json").read_text())
    rows.append({"caption": "a broken square", "id": "9", "image_name": "broken.png"})
    (tmp_path / "c.json").write_text(json.dumps(rows))
    data = f"{tmp_path / 'c.json'}:{media}"

    rc = _train(two_datasets, tmp_path / "run", "--data", data)
    err = capsys.readouterr().err
    assert rc == 2 and "1 of 3 rows" in err and "c.json, row key broken.png" in err and "--skip-bad-rows" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained before the check

    rc = _train(two_datasets, tmp_path / "run", "--data", data, "--skip-bad-rows")
    out = capsys.readouterr().out
    assert rc == 0 and "skipping 1 of 3 rows" in out and "broken.png" in out
    assert (tmp_path / "run" / "final").is_dir()
