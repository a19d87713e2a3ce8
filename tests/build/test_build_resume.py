"""Resumable streaming builds: an interrupted `vcell build` continues with --resume (engine.build.checkpoint)."""

import json

import numpy as np
import pandas as pd
import pytest

from engine.bundle.atlas import read_atlas
from engine.build.pipeline import build_atlas
from engine.build.prepare import BuildOptions
from engine.build.checkpoint import CHECKPOINT_DIR, RECORD, partial_path
from engine.errors import InputError
from vcell_testing import assert_same_bundle

OPTIONS = {"stream": True, "n_landmarks": 1000, "pca_sample": 2000}
BLOCK = 1000  # three blocks per pass on 3000 cells, so a pass can be interrupted half-way


class Recorder:
    """A progress callback that keeps the messages and raises KeyboardInterrupt at a chosen one."""

    def __init__(self, stop_at=None):
        self.stop_at, self.messages = stop_at, []

    def __call__(self, fraction: float, message: str) -> None:
        self.messages.append(message)
        if self.stop_at is not None and self.stop_at(message):
            raise KeyboardInterrupt

    def saw(self, text: str) -> bool:
        return any(text in m for m in self.messages)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr("engine.build.prepare.BLOCK", BLOCK)  # the in-memory first half
    monkeypatch.setattr("engine.build.stream.BLOCK", BLOCK)  # and the streaming one


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from engine.data.synth.generate import generate_atlas

    path = tmp_path_factory.mktemp("gen") / "gen3k"
    generate_atlas(path, 3000, seed=0)
    return path


@pytest.fixture(scope="module")
def reference(generated, tmp_path_factory):
    """The uninterrupted streaming build (same block size)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("engine.build.prepare.BLOCK", BLOCK)
        patch.setattr("engine.build.stream.BLOCK", BLOCK)
        return read_atlas(build_atlas(generated, tmp_path_factory.mktemp("ref") / "ref.vcell", BuildOptions(**OPTIONS)))


def _interrupt(source, out, stop_at, **options):
    with pytest.raises(KeyboardInterrupt):
        build_atlas(source, out, BuildOptions(**(OPTIONS | options)), progress=Recorder(stop_at))
    assert not out.exists() and (partial_path(out) / CHECKPOINT_DIR / RECORD).exists()
    return json.loads((partial_path(out) / CHECKPOINT_DIR / RECORD).read_text())["steps"]


def _resume(source, out, **options):
    resumed = Recorder()
    build_atlas(source, out, BuildOptions(**(OPTIONS | options)), progress=resumed, resume=True)
    assert out.exists() and not partial_path(out).exists() and not (out / CHECKPOINT_DIR).exists()
    return resumed


def _assert_equal_to(reference, out):
    resumed = read_atlas(out)
    assert_same_bundle(reference, resumed)
    assert np.array_equal(resumed.embedding(), reference.embedding())
    np.testing.assert_allclose(np.load(out / "obsm" / "X_umap.npy"), np.load(reference.path / "obsm" / "X_umap.npy"),
                               atol=1e-4)


def test_resume_after_interrupt_at_the_index(generated, reference, tmp_path):
    out = tmp_path / "a.vcell"
    steps = _interrupt(generated, out, lambda m: m == "building FAISS index")
    assert set(steps) == {"pass1", "pca", "pass2"}
    resumed = _resume(generated, out)
    assert resumed.saw("pass 1/2: already done (resumed)") and resumed.saw("pass 2/2: already done (resumed)")
    assert not resumed.saw("pass 1/2: normalising") and not resumed.saw("pass 2/2: embedding")
    assert resumed.saw("building FAISS index") and resumed.saw("computing the UMAP layout")
    _assert_equal_to(reference, out)


def test_resume_after_interrupt_half_way_through_pass_2(generated, reference, tmp_path):
    out = tmp_path / "b.vcell"
    steps = _interrupt(generated, out, lambda m: m.startswith("pass 2/2: embedding (1,000/"))
    assert set(steps) == {"pass1", "pca"}
    assert (partial_path(out) / "obsm" / "X_pca.npy").exists()  # half-filled: rewritten on resume
    resumed = _resume(generated, out)
    assert resumed.saw("pass 1/2: already done (resumed)") and resumed.saw("fitting PCA: already done (resumed)")
    assert not resumed.saw("pass 1/2: normalising")
    assert resumed.saw("pass 2/2: embedding (0/3,000 cells)")
    _assert_equal_to(reference, out)


def test_resume_after_interrupt_in_the_layout_of_an_unlabelled_input(shared_data, tmp_path):
    """Clusters (no cell types in the input) are kept; the summaries' third pass runs after resuming."""
    import anndata as ad

    from engine.data.schema import CANDIDATES

    adata = ad.read_h5ad(shared_data("kang_ifnb_1k.h5ad"))
    adata.obs = adata.obs[[c for c in adata.obs.columns if c.lower() not in CANDIDATES["cell_type"]]]
    adata.write_h5ad(tmp_path / "unlabelled.h5ad")
    source = tmp_path / "unlabelled.h5ad"
    memory = read_atlas(build_atlas(source, tmp_path / "memory.vcell", BuildOptions(**(OPTIONS | {"stream": False}))))
    out = tmp_path / "c.vcell"
    steps = _interrupt(source, out, lambda m: m == "computing the UMAP layout")
    assert set(steps) == {"pass1", "pca", "pass2", "index", "clusters"}
    resumed = _resume(source, out)
    assert resumed.saw("clustering: already done (resumed)") and not resumed.saw("pass 1/2: normalising")
    assert read_atlas(out).categories("cell_type")[0].startswith("cluster ")
    assert_same_bundle(memory, read_atlas(out))


def test_resume_with_other_options_is_refused(generated, tmp_path):
    out = tmp_path / "d.vcell"
    _interrupt(generated, out, lambda m: m == "building FAISS index")
    record = (partial_path(out) / CHECKPOINT_DIR / RECORD).read_text()
    with pytest.raises(InputError, match=r"different options \(option n_pcs: 50 then, 20 now\).*remove"):
        build_atlas(generated, out, BuildOptions(**OPTIONS, n_pcs=20), resume=True)
    assert (partial_path(out) / CHECKPOINT_DIR / RECORD).read_text() == record  # nothing was touched


def test_resume_with_another_input_is_refused(generated, tmp_path):
    import anndata as ad

    from vcell_testing import make_counts_adata

    other = tmp_path / "other.h5ad"
    make_counts_adata().write_h5ad(other)
    out = tmp_path / "e.vcell"
    _interrupt(other, out, lambda m: m == "building FAISS index")
    with pytest.raises(InputError, match="input source"):
        build_atlas(generated, out, BuildOptions(**OPTIONS), resume=True)
    ad.AnnData(make_counts_adata(n_cells=700).X).write_h5ad(other)  # same path, changed file
    with pytest.raises(InputError, match="input (size|mtime_ns)"):
        build_atlas(other, out, BuildOptions(**OPTIONS), resume=True)


def test_a_partial_directory_without_resume_is_refused_and_kept(generated, tmp_path):
    out = tmp_path / "f.vcell"
    steps = _interrupt(generated, out, lambda m: m.startswith("pass 2/2"))
    before = sorted(p.relative_to(partial_path(out)) for p in partial_path(out).rglob("*"))
    with pytest.raises(InputError, match=r"--resume.*remove"):
        build_atlas(generated, out, BuildOptions(**OPTIONS))
    assert sorted(p.relative_to(partial_path(out)) for p in partial_path(out).rglob("*")) == before
    assert set(json.loads((partial_path(out) / CHECKPOINT_DIR / RECORD).read_text())["steps"]) == set(steps)


def test_resume_without_a_partial_directory_builds_from_scratch(generated, reference, tmp_path):
    out = tmp_path / "g.vcell"
    fresh = _resume(generated, out)
    assert fresh.saw("pass 1/2: normalising") and not fresh.saw("resumed")
    assert_same_bundle(reference, read_atlas(out))


def test_cli_build_resume(tmp_path, monkeypatch, capsys):
    """`vcell build` keeps the partial build on Ctrl-C, refuses to start over, and continues with --resume."""
    import engine.space.index
    from engine.cli import main
    from vcell_testing import make_counts_adata

    source, out = tmp_path / "in.h5ad", tmp_path / "cli.vcell"
    make_counts_adata().write_h5ad(source)
    monkeypatch.setattr("engine.build.pipeline.STREAM_MIN_CELLS", 100)  # stream these 600 cells
    build_index = engine.space.index.build_index

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("engine.build.pipeline.build_index", interrupted)
    assert main(["build", str(source), "--out", str(out)]) == 130
    assert "--resume" in capsys.readouterr().err and partial_path(out).exists()
    monkeypatch.setattr("engine.build.pipeline.build_index", build_index)
    assert main(["build", str(source), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err and partial_path(out).exists()
    assert main(["build", str(source), "--out", str(out), "--resume"]) == 0
    assert read_atlas(out).n_cells == 600 and not partial_path(out).exists()


def test_resume_after_interrupt_while_adding_a_learned_model(tmp_path):
    """--model replaces the PCA index, layout and model/: a resume restores them and redoes the model."""
    from engine.bundle.atlas import validate_atlas
    from vcell_testing import make_counts_adata

    source = tmp_path / "in.h5ad"
    make_counts_adata().write_h5ad(source)
    options = {"model": "mae", "epochs": 1}
    reference = read_atlas(build_atlas(source, tmp_path / "ref.vcell", BuildOptions(**(OPTIONS | options))))
    out = tmp_path / "m.vcell"
    steps = _interrupt(source, out, lambda m: m.startswith("computing the UMAP layout of the learned"), **options)
    assert "pca_bundle" in steps and not (partial_path(out) / "index" / "X_pca.faiss").exists()
    resumed = _resume(source, out, **options)
    assert not resumed.saw("pass 1/2: normalising") and resumed.saw("building FAISS index: already done (resumed)")
    assert resumed.saw("pretraining mae")
    bundle = read_atlas(out)
    assert validate_atlas(out) == [] and (out / "baselines" / "pca").is_dir()
    assert bundle.manifest.embedding == reference.manifest.embedding
    assert sorted(p.name for p in (out / "index").iterdir()) == sorted(p.name for p in (reference.path / "index").iterdir())
    pd.testing.assert_frame_equal(bundle.obs, reference.obs)
    np.testing.assert_array_equal(np.load(out / "obsm" / "X_pca.npy"), np.load(reference.path / "obsm" / "X_pca.npy"))
    for name in ("config.json", "genes.txt", "weights.safetensors"):  # the PCA model moved aside, as uninterrupted
        assert (out / "baselines" / "pca" / name).read_bytes() == (reference.path / "baselines" / "pca" / name).read_bytes()
    assert bundle.embedding().shape == reference.embedding().shape
