"""Downloading and caching pretrained weights: `fetch` (the original file), `load_pretrained`
(download once, convert once, load).

Downloads go to `$MOBILENETV2_CACHE` (default `~/.cache/mobilenetv2`): `downloads/` holds the
original files, `converted/` our `.safetensors` made from them. Each download is fetched once,
with a tqdm progress bar, into a temporary file that is renamed into place only after the size
and hash check; anything corrupted or truncated is deleted. Offline, one line names the URL
and the `--weights PATH` alternative.

Compared with `torch.hub`: `torch.hub.download_url_to_file` has the same temp-file-then-rename
and sha256-prefix check, but it does not compare the bytes received with Content-Length (the
Keras files have no published hash, so their only guard against a truncated transfer is that
check), it has no timeout, and it reports failures as `RuntimeError` / `URLError` where we
give one line naming the URL and the local-file alternative; its cache directory
(`torch.hub.get_dir()`) is torch's, while ours is `$MOBILENETV2_CACHE`. So the loop below is
our own, written the way torch.hub's is.
"""

from __future__ import annotations

import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from torch import nn

from mobilenetv2._files import umask_mode
from mobilenetv2.errors import UserError
from mobilenetv2.weights.convert import convert_file, model_from_converted
from mobilenetv2.weights.format import load, save, sha256_file
from mobilenetv2.weights.pretrained import pretrained_entry

__all__ = ["cache_dir", "download", "fetch", "load_pretrained"]

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """`$MOBILENETV2_CACHE`, else `~/.cache/mobilenetv2`."""
    env = os.environ.get("MOBILENETV2_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mobilenetv2"


def _hash_ok(path: Path, expected: str | None) -> tuple[bool, str]:
    digest = sha256_file(path)
    return (expected is None or digest.startswith(expected.lower())), digest


def download(
    url: str, dest: Path, sha256: str | None = None, *, progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download `url` to `dest` once: atomic, size- and hash-checked, progress on stderr.

    A file already at `dest` that passes the hash is reused. A truncated (fewer bytes than
    Content-Length) or corrupted (hash mismatch) download is deleted and refused with
    `UserError`; so is a network failure, in one line naming the URL and the local-file
    alternative.
    """
    from tqdm import tqdm

    if dest.is_file():
        ok, digest = _hash_ok(dest, sha256)
        if ok:
            return dest
        log.warning("%s: cached file fails its hash (sha256 %s); downloading again", dest,
                    digest[:12])
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:
                total = r.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                received = 0
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=dest.name, disable=not progress, leave=False) as bar:
                    while block := r.read(1 << 16):
                        f.write(block)
                        received += len(block)
                        bar.update(len(block))
                f.flush()
                os.fsync(f.fileno())
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise UserError(
                f"cannot download {url} ({reason}); if offline, fetch the file elsewhere and "
                f"pass it: --weights /path/to/{dest.name}"
            ) from e
        if total is not None and received != total:
            raise UserError(
                f"download of {url} truncated: {received} of {total} bytes; removed, try again "
                f"or pass a local file: --weights /path/to/{dest.name}"
            )
        ok, digest = _hash_ok(tmp, sha256)
        if not ok:
            raise UserError(
                f"download of {url} is corrupted: sha256 {digest[:16]}... does not match "
                f"the published {sha256}; removed"
            )
        os.chmod(tmp, umask_mode())  # mkstemp's 0600 -> what any file of the user gets
        os.replace(tmp, dest)
        log.info("downloaded %s (sha256 %s)", dest, digest)
        return dest
    finally:
        if tmp.exists():
            tmp.unlink()


def fetch(name: str, *, progress: bool = True) -> Path:
    """The original file of registry entry `name`, downloaded into the cache if needed."""
    entry = pretrained_entry(name)
    return download(entry.url, cache_dir() / "downloads" / entry.filename, entry.sha256,
                    progress=progress)


def load_pretrained(name: str, *, progress: bool = True) -> nn.Module:
    """Model for registry entry `name`: download once, convert once (cached), load.

    The converted checkpoint carries the entry's preprocessing, labels, accuracy and
    provenance (URL, sha256 of the downloaded file).
    """
    entry = pretrained_entry(name)
    converted_path = cache_dir() / "converted" / f"{entry.name}.safetensors"
    if converted_path.is_file():
        try:
            model = load(converted_path).eval()
        except UserError as e:  # a damaged cache file is rebuilt, not fatal
            log.warning("%s; converting again", e)
            converted_path.unlink()
        else:
            meta = model.meta
            if (meta.provenance.get("url"), meta.preprocessing, meta.accuracy) == (
                entry.url, entry.preprocessing, entry.accuracy
            ):
                return model
            log.info("%s: made from an older registry entry; converting again", converted_path)
    original = fetch(name, progress=progress)
    conv = convert_file(original, entry.format, member=entry.member)
    got, want = conv.meta.config, entry.config
    if (got.width, got.num_classes) != (want.width, want.num_classes):
        raise UserError(
            f"{original}: holds width {got.width} with {got.num_classes} classes, but registry "
            f"entry {name!r} says width {want.width} with {want.num_classes} classes"
        )
    conv.meta.config = got.replace(resolution=want.resolution)
    conv.meta.preprocessing = entry.preprocessing
    conv.meta.accuracy = dict(entry.accuracy)
    conv.meta.provenance.update({"name": entry.name, "url": entry.url,
                                 "published_sha256": entry.sha256, "notes": entry.notes})
    model = model_from_converted(conv)  # checked before anything is cached
    save(model, converted_path)
    return model
