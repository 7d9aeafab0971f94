"""Issue 12: `convert --labels FILE` names the classes of a model not trained on ImageNet,
and errors inside a `.tgz` name the archive and its member, not a deleted temporary file."""

from __future__ import annotations

import tarfile

import pytest

from mobilenetv2.cli import main
from mobilenetv2.weights import load


def test_convert_labels_file(fixtures_dir, tmp_path, capsys) -> None:
    src = fixtures_dir / "mobilenet_v2_1.0_224_quant.tflite"
    names = tmp_path / "labels.txt"
    names.write_text("".join(f"species {i}\n" for i in range(1001)) + "\n")
    out = tmp_path / "m.safetensors"
    assert main(["convert", str(src), "-o", str(out), "--labels", str(names)]) == 0
    labels = load(out).meta.labels
    assert len(labels) == 1001 and labels[0] == "species 0" and labels[-1] == "species 1000"
    short = tmp_path / "short.txt"
    short.write_text("a\nb\nc\n")
    capsys.readouterr()
    assert main(["convert", str(src), "-o", str(tmp_path / "x.safetensors"), "--labels",
                 str(short)]) != 0
    err = capsys.readouterr().err
    assert "3 names for a classifier with 1001 outputs" in err
    assert not (tmp_path / "x.safetensors").exists()


def test_tgz_errors_name_the_archive_and_member(tmp_path, capsys) -> None:
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"\x00" * 64)  # not a flatbuffer
    archive = tmp_path / "mobilenet_v2.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bad, arcname="mobilenet_v2/model.tflite")
    assert main(["convert", str(archive), "-o", str(tmp_path / "m.safetensors")]) != 0
    err = capsys.readouterr().err
    assert f"{archive}:model.tflite" in err and "/tmp/tmp" not in err.replace(str(tmp_path), "")


@pytest.mark.parametrize("content", [b"\xff\xfe\x00bad", None])
def test_unreadable_labels_file_is_one_line(fixtures_dir, tmp_path, capsys, content) -> None:
    names = tmp_path / "labels.txt"
    if content is not None:
        names.write_bytes(content)
    assert main(["convert", str(fixtures_dir / "mobilenet_v2_1.0_224_quant.tflite"), "-o",
                 str(tmp_path / "m.safetensors"), "--labels", str(names)]) != 0
    err = capsys.readouterr().err
    assert "--labels" in err and "Traceback" not in err


def test_one_preprocessing_per_source(fixtures_dir) -> None:
    """`convert` of the official uint8 file and the registry entry for the same file record
    the same preprocessing (they said resize 224/crop 224 and 256/224)."""
    from mobilenetv2.weights.convert import convert_file
    from mobilenetv2.weights.pretrained import PRETRAINED

    conv = convert_file(fixtures_dir / "mobilenet_v2_1.0_224_quant.tflite")
    assert conv.meta.preprocessing == PRETRAINED["tflite_1.0_224_quant"].preprocessing
