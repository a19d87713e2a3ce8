"""Saving and loading encoders: bit-for-bit round trips, refusals, and gene alignment."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from engine.errors import BundleError, InputError
from engine.models.checkpoint import Checkpoint, save_checkpoint
from engine.models.serialize import align_block, align_genes, load_model, save_model
from engine.models.ssl import METHODS, build_model

N_GENES = 12
GENES = [f"G{i}" for i in range(N_GENES)]
CASES = {"mae": {"decoder": "nb"}, "gp-mae": {"programmes": [[0, 1, 2], [3, 4], [5, 6, 7, 8]]}, "byol": {},
         "barlow": {"projection": 16, "projection_hidden": 16}, "supervised": {"n_classes": 3}}


@pytest.mark.parametrize("method", METHODS)
def test_round_trip_reproduces_embeddings_bit_for_bit(tmp_path, method):
    torch.manual_seed(0)
    model = build_model(method, N_GENES, hidden=(16, 16), latent=4, norm="batch", **CASES[method])
    x = torch.rand(32, N_GENES) * 3
    model.train()
    with torch.no_grad():  # move BatchNorm running statistics away from their defaults
        model.encoder(x)
    expected = model.embed(x)
    save_model(tmp_path / "m", model, GENES, extra={"val_loss": 0.25, "epochs": 3})
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["method"] == method and config["val_loss"] == 0.25 and config["format"] == "vcell-model"
    loaded, genes = load_model(tmp_path / "m")
    assert genes == GENES and type(loaded) is type(model) and not loaded.training
    assert torch.equal(loaded.embed(x), expected)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_save_refuses_wrong_gene_count_and_clashing_extras(tmp_path):
    model = build_model("mae", N_GENES, hidden=(8,), latent=2)
    with pytest.raises(InputError, match="12 inputs but 3 gene names"):
        save_model(tmp_path / "a", model, GENES[:3])
    with pytest.raises(InputError, match="latent would overwrite"):
        save_model(tmp_path / "b", model, GENES, extra={"latent": 5})


def test_foreign_or_corrupt_checkpoints_are_refused(tmp_path):
    with pytest.raises(BundleError, match="lacks"):
        load_model(tmp_path / "nothing")
    pca_like = Checkpoint(config={"model": "pca", "n_components": 2}, weights={"mean": np.zeros(3, np.float32)},
                          genes=["a", "b", "c"])
    save_checkpoint(tmp_path / "pca", pca_like)
    with pytest.raises(BundleError, match="not a neural encoder"):
        load_model(tmp_path / "pca")
    model = build_model("mae", N_GENES, hidden=(8,), latent=2)
    save_model(tmp_path / "m", model, GENES)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["latent"] = 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="do not fit the mae model"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="corrupt"):
        load_model(tmp_path / "m")


def test_align_genes_by_id_or_symbol():
    table = pd.DataFrame({"gene_id": ["ENSG00000000001.3", "ENSG00000000002", None, "ENSG00000000004"],
                          "gene_symbol": ["AAA", "BBB", "CCC", None]}, index=["c0", "c1", "c2", "c3"])
    model_genes = ["ENSG00000000001", "bbb", "CCC", "ENSG00000000004.7", "ZZZ"]
    positions, overlap = align_genes(model_genes, table)
    assert positions.tolist() == [0, 1, 2, 3, -1] and overlap == pytest.approx(0.8)
    positions, overlap = align_genes(["a", "B", "q"], ["A", "b", "C"], min_overlap=0.5)
    assert positions.tolist() == [0, 1, -1] and overlap == pytest.approx(2 / 3)


def test_align_genes_pairs_symbols_and_ids_through_gencode():
    atlas_ids = ["ENSG00000090382.4", "ENSG00000187608", "ENSG00000170458"]  # LYZ, ISG15, CD14
    positions, overlap = align_genes(["cd14", "ISG15", "LYZ", "NOPE"], atlas_ids, min_overlap=0.5)
    assert positions.tolist() == [2, 1, 0, -1] and overlap == pytest.approx(0.75)
    positions, _ = align_genes(["ENSG00000170458.9", "ENSG00000090382"], ["LYZ", "CD14"])  # IDs onto symbols
    assert positions.tolist() == [1, 0]
    table = pd.DataFrame({"gene_id": [None, "ENSG00000187608"], "gene_symbol": ["ISG15", "OWN-NAME"]},
                         index=["c0", "c1"])
    positions, _ = align_genes(["ISG15", "ENSG00000187608"], table)  # a gene's own names outrank GENCODE's
    assert positions.tolist() == [0, 1]


def test_align_genes_refuses_low_overlap_with_numbers():
    model_genes = [f"GENE{i}" for i in range(19331)]
    atlas = [f"GENE{i}" for i in range(812)] + ["OTHER"]
    with pytest.raises(InputError) as err:
        align_genes(model_genes, atlas)
    assert str(err.value) == ("The model knows 19,331 genes; only 812 (4.2%) are in this atlas: "
                              "below the 50% needed.")


def test_missing_genes_are_zero_and_masked_for_embedding():
    positions, _ = align_genes(["g2", "g0", "gx", "g1"], ["g0", "g1", "g2"], min_overlap=0.5)
    block = sp.csr_matrix(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32))
    x, missing = align_block(block, positions)
    assert x.tolist() == [[3.0, 1.0, 0.0, 2.0], [6.0, 4.0, 0.0, 5.0]]
    assert missing.tolist() == [False, False, True, False]
    model = build_model("mae", 4, hidden=(8,), latent=2)
    x_noisy = x.clone()
    x_noisy[:, 2] = 9.0
    assert torch.equal(model.embed(x_noisy, missing), model.embed(x))
