"""vcell build --model: a learned embedding becomes the bundle's default (map, index, neighbours)."""

import json
import shutil

import numpy as np
import torch
from vcell_testing import shared_file

from engine.build.embed import embed_atlas
from engine.bundle.atlas import read_atlas, validate_atlas
from engine.bundle.manifest import Embeddings
from engine.cli import main
from engine.models.serialize import align_genes, load_model
from engine.models.ssl import build_model
from engine.space.neighbours import find_neighbours


def test_learned_embedding_is_the_default(mae_bundle):
    assert validate_atlas(mae_bundle) == []
    atlas = read_atlas(mae_bundle)
    manifest = atlas.manifest
    assert manifest.embedding == Embeddings(default="X_mae", available=("X_mae", "X_pca"))
    assert manifest.index.path == "index/X_mae.faiss" and manifest.layout.embedding == "X_mae"
    assert manifest.model.name == "mae" and manifest.model.training["epochs"] == 2
    assert atlas.embedding().shape == (atlas.n_cells, 64) and atlas.index.d == 64
    # the PCA baseline stays: its embedding and its checkpoint
    assert atlas.embedding("X_pca").shape[1] == 50
    assert json.loads((mae_bundle / "baselines" / "pca" / "config.json").read_text())["model"] == "pca"
    # neighbours are searched in the learned space and still respect biology
    mono = np.flatnonzero(atlas.obs["cell_type"] == "CD14 Mono")[:1]
    found = find_neighbours(atlas, mono, k=10)
    assert found.summary.breakdown["cell_type"]["value"].iloc[0] == "CD14 Mono"
    assert 0.0 <= manifest.quality["knn_label_agreement"] <= 1.0 and "pca_knn_label_agreement" in manifest.quality


def test_model_checkpoint_can_be_reused_and_bad_models_are_refused(mae_bundle, tmp_path, shared_data, capsys):
    source = str(shared_data("kang_ifnb_1k.h5ad"))
    reused = tmp_path / "reused.vcell"
    shutil.copytree(mae_bundle / "model", tmp_path / "mae_model")
    assert main(["build", source, "--out", str(reused), "--model", str(tmp_path / "mae_model")]) == 0
    np.testing.assert_allclose(read_atlas(reused).embedding(), read_atlas(mae_bundle).embedding(), atol=1e-5)
    assert main(["build", source, "--out", str(tmp_path / "x.vcell"), "--model", "transformer"]) == 2
    assert "neither a method" in capsys.readouterr().err
    assert not (tmp_path / "x.vcell").exists()


def test_pretrain_then_embed_adds_an_embedding_without_changing_the_default(small_bundle, tmp_path, capsys):
    bundle = tmp_path / "b.vcell"
    shutil.copytree(small_bundle, bundle)
    run = tmp_path / "run"
    assert main(["pretrain", str(bundle), "--method", "barlow", "--epochs", "1", "--max-cells", "1000",
                 "--out", str(run)]) == 0
    assert (run / "model" / "weights.safetensors").exists()
    assert main(["embed", str(bundle), "--model", str(run / "model")]) == 0
    atlas = read_atlas(bundle)
    assert atlas.manifest.embedding == Embeddings(default="X_pca", available=("X_pca", "X_barlow"))
    assert atlas.embedding("X_barlow").shape == (atlas.n_cells, 64)
    assert np.isfinite(atlas.embedding("X_barlow")).all()
    assert validate_atlas(bundle) == []
    assert main(["pretrain", str(bundle), "--method", "vae", "--out", str(tmp_path / "bad")]) == 2
    assert "Unknown method 'vae'" in capsys.readouterr().err


def test_a_model_applies_to_an_atlas_with_other_genes_or_refuses(mae_bundle, covid_bundle, tmp_path, capsys):
    model, genes = load_model(mae_bundle / "model")
    covid = read_atlas(covid_bundle)
    positions, overlap = align_genes(genes, covid.var)
    assert 0.5 < overlap < 1.0  # Kang's HVGs are partly absent from the COVID panel: filled and masked
    embedding = embed_atlas(covid, model, genes)
    assert embedding.shape == (covid.n_cells, 64) and np.isfinite(embedding).all()
    # the Ensembl-ID reference, a 2,511-gene panel, holds too few of the model's genes even paired through
    # GENCODE (measured 22% of Kang's 2,000 HVGs): refused, overlap stated
    out = tmp_path / "ref.vcell"
    assert main(["build", str(shared_file("kang_ctrl_reference.h5ad")), "--out", str(out),
                 "--model", str(mae_bundle / "model")]) == 2
    err = capsys.readouterr().err
    assert "are in this atlas" in err and "below the 50% needed" in err and not out.exists()


def test_embed_atlas_matches_model(small_bundle, tmp_path):
    atlas = read_atlas(small_bundle)
    genes = list(atlas.var.index[:50])
    torch.manual_seed(0)
    model = build_model("mae", 50, hidden=[32], latent=8)
    z = embed_atlas(atlas, model, genes, batch_size=700)
    x = torch.from_numpy(atlas.store.rows(np.arange(3000), np.arange(50)).toarray())
    np.testing.assert_allclose(z, model.embed(x).detach().numpy(), rtol=1e-4, atol=1e-5)
