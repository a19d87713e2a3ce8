"""Tests of engine.perturb.virtual_cell: the masked-autoencoder counterfactual, its baselines and where cells land."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.bundle.atlas import Atlas
from engine.errors import BundleError, GeneNotFoundError, InputError
from engine.perturb.spec import NO_CHANGE_METHOD, RIDGE_METHOD, TABLE_COLUMNS, PerturbationSpec, clamp_targets
from engine.perturb.predict import available_methods, default_method, perturb
from engine.perturb.virtual_cell import DEFAULT_MASKS, MODEL_METHOD, model_shift
from engine.perturb.counterfactual import ModelPerturbResult, has_virtual_cell, load_mae, perturb_with_model
from engine.models.ssl import build_model
from vcell_testing import by_gene, toy_mae


class FixedMask:
    """A masker that hides the same genes in every cell and draw (so a naive reference can reuse it)."""

    def __init__(self, hidden: np.ndarray):
        self.hidden = torch.as_tensor(hidden)

    def __call__(self, n_cells, n_genes, generator=None, device=None):
        return self.hidden.to(device).reshape(1, -1).expand(n_cells, n_genes).clone()


def naive_shift(model, x, targets, spec, hidden):
    """``mean(reconstruct(perturbed, M) - reconstruct(control, M))`` with the mask M, targets unmasked."""
    xp = x.copy()
    xp[:, targets] = clamp_targets(x[:, targets], spec)
    mask = torch.as_tensor(np.broadcast_to(hidden, x.shape).copy())
    mask[:, targets] = False
    diff = model.reconstruct(torch.from_numpy(xp), mask) - model.reconstruct(torch.from_numpy(x), mask)
    return diff.double().mean(0).numpy()


# ----------------------------------------------------------------------------- the counterfactual
def test_knockout_of_a_silent_gene_predicts_exactly_nothing():
    model, x, labels = toy_mae()
    result = model_shift(model, x, [3], PerturbationSpec(["G3"], "ko"), gene_labels=labels, n_masks=8,
                         max_pairs=None, n_boot=10, device="cpu")
    table = result.table
    assert list(table.columns) == TABLE_COLUMNS and result.method == MODEL_METHOD
    # random masks differ between draws; only identical masks for control and perturbed give exactly 0
    assert np.abs(table["shift"]).max() == 0.0
    assert np.abs(table[["ci_low", "ci_high"]].to_numpy()).max() == 0.0
    assert result.silent_targets == ["G3"] and "0 of 300 cells" in result.warnings[0]
    assert result.spec == "knock-out of G3" and result.n_cells == 300 and result.bootstrap == "cells"
    assert (result.n_masks, result.n_pairs, result.device, result.n_models) == (8, 8 * 300, "cpu", 1)
    assert all(len(v) == len(table) for v in (result.se_mask, result.sd_bootstrap, result.sd_seed))


@pytest.mark.parametrize("decoder", ["mse", "nb"])
@pytest.mark.parametrize("mode", ["ko", "oe"])
def test_shift_equals_the_naive_decoded_difference(decoder, mode):
    model, x, labels = toy_mae(decoder=decoder)
    hidden = np.zeros(x.shape[1], bool)
    hidden[10:25] = True
    hidden[0] = True  # the target is listed as hidden: it must stay observed
    model.masker = FixedMask(hidden)
    spec = PerturbationSpec(["G0"], mode)
    result = model_shift(model, x, [0], spec, gene_labels=labels, n_masks=3, max_pairs=None, n_boot=0,
                         device="cpu", batch_pairs=128)
    table = result.table
    expected = naive_shift(model, x, [0], spec, hidden)
    got = by_gene(table)
    others = [i for i in range(x.shape[1]) if i != 0]
    np.testing.assert_allclose([got[f"G{i}"] for i in others], expected[others], atol=2e-5)
    assert np.abs(expected[others]).max() > 1e-3  # the perturbation moves something, so the check can fail
    assert got["G0"] == pytest.approx(float((clamp_targets(x[:, [0]], spec) - x[:, [0]]).mean()))  # its clamp
    assert result.se_mask.max() < 1e-6  # the same mask in every draw: no Monte Carlo spread
    assert result.bootstrap == "none" and not result.sd_bootstrap.any()


def test_intervals_contain_the_shift_and_missing_genes_are_left_out():
    model, x, labels = toy_mae()
    missing = np.zeros(x.shape[1], bool)
    missing[30:] = True
    result = model_shift(model, x, [0, 1], PerturbationSpec(["G0", "G1"], "kd", 0.2), gene_labels=labels,
                         missing=missing, n_masks=4, max_pairs=400, donors=np.repeat(["a", "b", "c"], 100),
                         device="cpu")
    table = result.table
    assert len(table) == 30 and not set(table["gene"]) & {f"G{i}" for i in range(30, 40)}
    assert result.bootstrap == "donors" and result.n_pairs == 400
    assert (table["ci_low"] <= table["shift"]).all() and (table["shift"] <= table["ci_high"]).all()
    assert (table["ci_high"] - table["ci_low"])[~table["is_target"]].min() > 0
    assert set(table.loc[table["is_target"], "gene"]) == {"G0", "G1"}


def test_model_shift_rejects_bad_input():
    model, x, labels = toy_mae()
    spec = PerturbationSpec(["G0"], "ko")
    with pytest.raises(InputError, match="no cells"):
        model_shift(model, x[:0], [0], spec)
    with pytest.raises(InputError, match="expects 40 genes"):
        model_shift(model, x[:, :10], [0], spec)
    missing = np.zeros(40, bool)
    missing[0] = True
    with pytest.raises(InputError, match="missing from the atlas"):
        model_shift(model, x, [0], spec, missing=missing)
    with pytest.raises(InputError, match="not a masked autoencoder"):
        model_shift(build_model("barlow", 40, hidden=[16], latent=4), x, [0], spec)
    with pytest.raises(InputError, match="at most"):
        PerturbationSpec([f"G{i}" for i in range(11)], "ko")


# ----------------------------------------------------------------------------- on a bundle
@pytest.fixture(scope="module")
def kang(mae_bundle):
    atlas = Atlas(mae_bundle)
    cell_type = atlas.obs[atlas.roles["cell_type"]].value_counts().index[0]
    return atlas, str(cell_type), atlas.categories("condition")[0]


def test_full_path_on_a_learned_bundle(kang):
    atlas, cell_type, condition = kang
    result = perturb(atlas, ["ISG15"], "kd", cell_type=cell_type, condition=condition, method="model", n_boot=20)
    assert isinstance(result, ModelPerturbResult) and result.method.startswith(MODEL_METHOD)
    assert list(result.table.columns) == TABLE_COLUMNS
    assert result.n_models == 1 and not result.sd_seed.any() and result.n_masks == DEFAULT_MASKS
    assert len(result.se_mask) == len(result.sd_bootstrap) == len(result.table) and result.bootstrap == "cells"
    assert set(result.baselines) == {NO_CHANGE_METHOD, RIDGE_METHOD}
    for baseline in result.baselines.values():
        assert set(baseline["gene"]) == set(result.table["gene"])
    target = result.table[result.table["is_target"]]
    assert target["gene"].tolist() == ["ISG15"] and float(target["shift"].iloc[0]) < 0
    assert float(target["shift"].iloc[0]) == pytest.approx(
        float(result.baselines[NO_CHANGE_METHOD].set_index("gene").loc["ISG15", "shift"]), abs=1e-5)
    landing = result.landing
    assert landing is not None and result.landing_note is None
    for _, part in landing.composition.groupby("role"):
        assert part["control"].sum() == pytest.approx(1.0) and part["perturbed"].sum() == pytest.approx(1.0)
    assert landing.layout_perturbed.shape == (len(landing.cells), 2) and landing.latent_shift > 0


def test_silent_gene_knockout_on_a_bundle_predicts_nothing(kang):
    atlas, cell_type, condition = kang
    from engine.bundle.select import select_cells
    from engine.models.serialize import align_genes

    _, genes = load_mae(atlas)
    positions, _ = align_genes(genes, atlas.var)
    cells = select_cells(atlas.obs, cell_type=cell_type, condition=condition, roles=atlas.roles)
    X = atlas.expression(cells, np.sort(positions[positions >= 0]))
    silent = np.sort(positions[positions >= 0])[np.asarray((X > 0).sum(axis=0)).ravel() == 0]
    if silent.size == 0:
        pytest.skip("every model gene is expressed in this population")
    gene = atlas.genes.label(int(silent[0]))
    result = perturb_with_model(atlas, [gene], "ko", cell_type=cell_type, condition=condition, n_boot=5)
    assert np.abs(result.table["shift"]).max() == 0.0
    assert any("0 of" in w for w in result.warnings)


def test_bad_input_on_bundles(kang, small_bundle):
    atlas, cell_type, condition = kang
    with pytest.raises(GeneNotFoundError, match="Did you mean.*ISG15"):
        perturb_with_model(atlas, ["ISG1S"], "ko", cell_type=cell_type)
    _, genes = load_mae(atlas)
    outside = next(str(g) for g in atlas.var.index if g not in set(genes))
    with pytest.raises(GeneNotFoundError, match="not among the model's"):
        perturb_with_model(atlas, [outside], "ko", cell_type=cell_type)
    with pytest.raises(InputError, match="Unknown perturbation method"):
        perturb(atlas, ["ISG15"], "ko", method="deep")
    with pytest.raises(BundleError, match="--model mae"):
        perturb_with_model(Atlas(small_bundle), ["CD14"], "ko")


def test_the_predictor_follows_the_bundle_model(kang, small_bundle):
    atlas, _, _ = kang
    assert has_virtual_cell(atlas) and available_methods(atlas) == ["model", "ridge"]
    assert default_method(atlas) == "model"
    plain = Atlas(small_bundle)
    assert not has_virtual_cell(plain) and available_methods(plain) == ["ridge"] and default_method(plain) == "ridge"


# ----------------------------------------------------------------------------- model seeds
def test_build_with_model_seeds_gives_an_ensemble(shared_data, tmp_path):
    import json

    from engine.cli import main
    from engine.perturb.counterfactual import load_mae_ensemble

    out = tmp_path / "kang_seeds.vcell"
    assert main(["build", str(shared_data("kang_ifnb_1k.h5ad")), "--out", str(out), "--model", "mae",
                 "--epochs", "1", "--model-seeds", "2"]) == 0
    for name in ("config.json", "weights.safetensors", "genes.txt", "training_history.json"):
        assert (out / "model_seeds" / "seed-1" / name).exists(), name
    assert not list(out.glob("training*"))  # run directories are dropped like the main one
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["seeds"] == [0, 1]
    atlas = Atlas(out)
    models = load_mae_ensemble(atlas)
    assert len(models) == 2 and models[0][1] == models[1][1]
    cell_type = atlas.obs[atlas.roles["cell_type"]].value_counts().index[0]
    result = perturb_with_model(atlas, ["ISG15"], "kd", cell_type=str(cell_type), n_boot=5, n_masks=4)
    assert result.n_models == 2 and "2 model seeds" in result.method
    assert result.sd_seed.max() > 0 and len(result.sd_seed) == len(result.table)


@pytest.mark.parametrize("model", ["byol", None])
def test_model_seeds_need_a_masked_autoencoder(model, counts_adata, tmp_path):
    from engine.build.pipeline import build_atlas
    from engine.build.prepare import BuildOptions

    source = tmp_path / "in.h5ad"
    counts_adata.write_h5ad(source)
    with pytest.raises(InputError, match="--model-seeds 2 .*--model mae"):
        build_atlas(source, tmp_path / "out.vcell", BuildOptions(model=model, model_seeds=2))
    assert not (tmp_path / "out.vcell").exists()
