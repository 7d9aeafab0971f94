"""Pretrained registry, download cache and the `pretrained` verb, against a local HTTP server
on 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import tarfile
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mobilenetv2.errors import UserError
from mobilenetv2.weights import hub, load_weights
from mobilenetv2.weights import pretrained as pt
from mobilenetv2.weights.convert import FORMATS, extract_member


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).requests.append(self.path)
        if self.path.startswith("/truncated/"):
            data = (Path(self.directory) / self.path.split("/", 2)[2]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])  # then the connection closes
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    _Handler.requests = []

    def handler(*args, **kwargs):
        return _Handler(*args, directory=str(root), **kwargs)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("MOBILENETV2_CACHE", str(path))
    return path


def _torchvision_file(root: Path, name: str = "mobilenet_v2-small.pth") -> tuple[Path, str]:
    import torchvision

    model = torchvision.models.mobilenet_v2(width_mult=0.35)
    path = root / name
    torch.save(model.state_dict(), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _entry(url: str, sha256: str | None) -> pt.PretrainedEntry:
    base = pt.PRETRAINED["torchvision_imagenet1k_v1"]
    return replace(base, name="test_tv", url=url, sha256=sha256,
                   config=base.config.replace(width=0.35))


def test_download_once_verify_convert(server, cache, monkeypatch) -> None:
    root, base = server
    path, digest = _torchvision_file(root)
    entry = _entry(f"{base}/{path.name}", digest[:8])  # torchvision-style 8-hex prefix
    monkeypatch.setitem(pt.PRETRAINED, entry.name, entry)
    model = load_weights("test_tv")
    assert _Handler.requests == [f"/{path.name}"]
    meta = model.meta
    assert meta.config.width == 0.35 and meta.accuracy == {"top1": 71.878, "top5": 90.286}
    assert meta.preprocessing.resize == 256 and meta.labels[1] == "goldfish"
    assert meta.provenance["url"] == entry.url and meta.provenance["source_sha256"] == digest
    assert (cache / "downloads" / path.name).read_bytes() == path.read_bytes()
    assert not list(cache.rglob("*.part"))
    # Again: served from the converted cache; with that gone, from the download cache.
    load_weights("test_tv")
    (cache / "converted" / "test_tv.safetensors").unlink()
    again = load_weights("test_tv")
    assert _Handler.requests == [f"/{path.name}"]
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(again(x), model(x))
    # A registry change (here the preprocessing) rebuilds the converted file, not the download.
    changed = replace(entry, preprocessing=replace(entry.preprocessing, resize=232))
    monkeypatch.setitem(pt.PRETRAINED, entry.name, changed)
    assert load_weights("test_tv").meta.preprocessing.resize == 232
    assert _Handler.requests == [f"/{path.name}"]


def test_full_sha256_and_missing_hash(server, cache, monkeypatch) -> None:
    root, base = server
    path, digest = _torchvision_file(root)
    got = hub.download(f"{base}/{path.name}", cache / "a.pth", digest, progress=False)
    assert got.read_bytes() == path.read_bytes()
    got = hub.download(f"{base}/{path.name}", cache / "b.pth", None, progress=False)
    assert got.is_file()


def test_corrupted_download_refused_and_removed(server, cache, monkeypatch) -> None:
    root, base = server
    path, digest = _torchvision_file(root)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in transit
    (root / "corrupt.pth").write_bytes(bytes(data))
    entry = _entry(f"{base}/corrupt.pth", digest[:8])
    monkeypatch.setitem(pt.PRETRAINED, entry.name, entry)
    with pytest.raises(UserError, match=r"corrupted: sha256 .* does not match .*removed"):
        load_weights("test_tv")
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_truncated_download_refused_and_removed(server, cache, monkeypatch) -> None:
    root, base = server
    path, digest = _torchvision_file(root)
    # No hash at all (like the Keras files): the Content-Length check alone must catch it.
    entry = _entry(f"{base}/truncated/{path.name}", None)
    monkeypatch.setitem(pt.PRETRAINED, entry.name, entry)
    with pytest.raises(UserError, match=r"truncated") as info:
        load_weights("test_tv")
    print(info.value)
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_cached_file_failing_hash_is_replaced(server, cache) -> None:
    root, base = server
    path, digest = _torchvision_file(root)
    dest = cache / "downloads" / path.name
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"garbage")
    hub.download(f"{base}/{path.name}", dest, digest, progress=False)
    assert dest.read_bytes() == path.read_bytes()


def test_offline_is_one_line_naming_url_and_local_file(cache, monkeypatch, capsys) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = _entry(f"http://127.0.0.1:{port}/mobilenet_v2-b0353104.pth", "b0353104")
    monkeypatch.setitem(pt.PRETRAINED, entry.name, entry)
    with pytest.raises(UserError) as info:
        load_weights("test_tv")
    msg = str(info.value)
    assert "\n" not in msg and entry.url in msg
    assert "--weights /path/to/mobilenet_v2-b0353104.pth" in msg


def test_registry_entries_are_complete() -> None:
    names = set(pt.PRETRAINED)
    assert {"torchvision_imagenet1k_v1", "torchvision_imagenet1k_v2", "tflite_1.0_224",
            "tflite_1.0_224_quant", "keras_1.0_224", "keras_0.35_96", "keras_1.4_224"} <= names
    v1, v2 = pt.PRETRAINED["torchvision_imagenet1k_v1"], pt.PRETRAINED["torchvision_imagenet1k_v2"]
    assert v1.url == "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"
    assert v2.url == "https://download.pytorch.org/models/mobilenet_v2-7ebf99e0.pth"
    assert (v1.preprocessing.resize, v2.preprocessing.resize) == (256, 232)
    assert v1.accuracy == {"top1": 71.878, "top5": 90.286}
    assert v2.accuracy == {"top1": 72.154, "top5": 90.822}
    for e in pt.PRETRAINED.values():
        assert e.url.startswith("https://") and e.format in FORMATS
        # Every classifier has its published accuracy; no mIoU is published for the GPU
        # DeepLab file (weights/pretrained.py says why).
        assert e.accuracy or e.name == "deeplabv3_257_mv_gpu"
        if e.format == "torchvision":  # the hash prefix is the one in the file name
            assert e.filename.endswith(f"-{e.sha256}.pth")
        if e.format == "keras":
            w, r = e.config.width, e.config.resolution
            stem = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels"
            assert e.filename == f"{stem}_{float(w)}_{r}.h5"
            assert e.preprocessing.crop == r and e.preprocessing.mean == (0.5,) * 3
    assert len([e for e in pt.PRETRAINED.values() if e.format == "keras"]) == 22


def test_cli_pretrained_lists_registry(capsys) -> None:
    from mobilenetv2.cli import main

    assert main(["pretrained", "--json"]) == 0
    names = [e["name"] for e in json.loads(capsys.readouterr().out)]
    assert "torchvision_imagenet1k_v2" in names and "tflite_1.0_224_quant" in names


def test_torchvision_v2_categories_match_labels() -> None:
    from torchvision.models import MobileNet_V2_Weights

    from mobilenetv2.weights.imagenet import imagenet_labels

    assert imagenet_labels(1000) == MobileNet_V2_Weights.IMAGENET1K_V2.meta["categories"]
    assert imagenet_labels(1001)[0] == "background" and imagenet_labels(1001)[1] == "tench"


def test_tflite_labels_against_fixture(fixtures_dir) -> None:
    from mobilenetv2.weights.imagenet import imagenet_labels

    theirs = (fixtures_dir / "imagenet_labels.txt").read_text().splitlines()
    ours = imagenet_labels(1001)
    differ = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b.split(", ")[0]]
    assert len(theirs) == 1001 and differ == [135, 640]  # documented in labels.py


def test_unknown_name_and_missing_file() -> None:
    with pytest.raises(UserError, match="neither a file nor a known pretrained name"):
        load_weights("torchvision_v3")
    with pytest.raises(FileNotFoundError):
        load_weights("/nonexistent/w.pth")


def test_extract_member_is_safe(tmp_path) -> None:
    archive = tmp_path / "m.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in [("../../escape.tflite", b"model"), ("dir/info.txt", b"x")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.tflite")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = extract_member(archive, None, out_dir)
    assert out == out_dir / "escape.tflite" and out.read_bytes() == b"model"
    assert not (tmp_path / "escape.tflite").exists()
    assert not (tmp_path.parent / "escape.tflite").exists()
    with pytest.raises(UserError, match="no 'link.tflite' inside"):
        extract_member(archive, "link.tflite", out_dir)
    (tmp_path / "bad.tgz").write_bytes(archive.read_bytes()[:40])
    with pytest.raises(UserError, match="corrupt or truncated archive"):
        extract_member(tmp_path / "bad.tgz", None, out_dir)


def test_cli_offline_name_is_one_line(tmp_path, cache, monkeypatch, capsys) -> None:
    from mobilenetv2.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = _entry(f"http://127.0.0.1:{port}/mobilenet_v2-b0353104.pth", "b0353104")
    monkeypatch.setitem(pt.PRETRAINED, entry.name, entry)
    rc = main(["predict", str(tmp_path), "--weights", "test_tv"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and entry.url in err[0] and "--weights /path/to" in err[0]


def test_foreign_safetensors_state_dict_is_converted(tmp_path) -> None:
    timm = pytest.importorskip("timm", reason="timm (peers extra) not installed")
    from safetensors.torch import save_file

    ref = timm.create_model("mobilenetv2_050", pretrained=False).eval()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()},
              tmp_path / "model.safetensors")  # the Hugging Face hub layout of timm weights
    model = load_weights(str(tmp_path / "model.safetensors"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-5)


def test_tflite_archive_served_downloaded_converted(fixtures_dir, server, cache,
                                                   monkeypatch) -> None:
    """The hosted-model path end to end: a .tgz like the official one (the fixture model plus
    the other files those archives hold), served locally, hash-checked, safely extracted,
    converted, cached; then it classifies a real photo."""
    from mobilenetv2.predict import predict

    root, base = server
    archive = root / "mobilenet_v2_1.0_224_quant.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(fixtures_dir / "mobilenet_v2_1.0_224_quant.tflite",
                arcname="./mobilenet_v2_1.0_224_quant.tflite")
        info = tarfile.TarInfo("./mobilenet_v2_1.0_224_quant_info.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"info\n"))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    entry = replace(pt.PRETRAINED["tflite_1.0_224_quant"], url=f"{base}/{archive.name}",
                    sha256=digest)
    monkeypatch.setitem(pt.PRETRAINED, entry.name, entry)
    model = load_weights(entry.name)
    meta = model.meta
    assert meta.accuracy == {"top1": 70.8, "top5": 89.9} and meta.config.num_classes == 1001
    assert meta.provenance["archive_member"] == "mobilenet_v2_1.0_224_quant.tflite"
    assert meta.provenance["source_sha256"] == digest and meta.labels[0] == "background"
    [result] = predict(model, [fixtures_dir / "cat.bmp"], topk=1)
    assert result.top[0][1] == "Egyptian cat"
    assert (cache / "converted" / f"{entry.name}.safetensors").is_file()
