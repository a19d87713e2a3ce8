"""The atlas generator: store layout, determinism, and that the data show the ground truth."""

from __future__ import annotations

import json
import math

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import tiledbsoma as soma
import tiledbsoma.io as soma_io

from engine.data.synth.generate import generate_atlas, load_truth
from engine.data.synth.model import load_model
from engine.data.synth.sample import Sampler, block_size
from engine.data.synth.truth import MODES, expected_effect, model_log2_mean
from engine.errors import GeneNotFoundError, InputError

N_CELLS = 3001  # more than one random-stream block (2,048 cells at 765 genes), not a multiple of the chunk
SMALL = {"truth_cells": 300}


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    """A 3,001-cell generated atlas (765 genes) written in chunks of 1,000, read back whole."""
    out = tmp_path_factory.mktemp("gen") / "atlas"
    fractions = []
    generate_atlas(out, N_CELLS, chunk_size=1000, seed=3, progress=lambda f, m: fractions.append(f), **SMALL)
    with soma.Experiment.open(str(out / "atlas.soma")) as exp:
        adata = soma_io.to_anndata(exp, measurement_name="RNA", X_layer_name="counts")
        meta = json.loads(exp.metadata["generated"])
    return {"out": out, "adata": adata, "truth": load_truth(out), "progress": fractions, "meta": meta}


def lognorm(adata: ad.AnnData) -> sp.csc_matrix:
    x = sp.csr_matrix(adata.X, dtype=np.float64)
    x = sp.diags(1e4 / np.maximum(np.asarray(x.sum(1)).ravel(), 1)) @ x
    x.data = np.log1p(x.data)
    return x.tocsc()


def test_soma_store_has_expected_shape_obs_and_integer_counts(atlas):
    adata = atlas["adata"]
    assert adata.shape == (N_CELLS, 765)
    assert {"cell_type", "disease", "donor_id", "batch"} <= set(adata.obs.columns)
    assert adata.obs_names.is_unique and adata.obs_names[0] == "cell0000"
    assert set(adata.obs["disease"]) == {"normal", "disease A", "disease B"}
    assert "normal-D1" in set(adata.obs["donor_id"]) and "disease_A-D4" in set(adata.obs["donor_id"])
    assert set(adata.obs["batch"]) == {"batch1", "batch2"}
    assert adata.var["feature_name"].tolist() == adata.var_names.tolist()
    data = adata.X.data
    assert adata.X.dtype == np.float32 and (data > 0).all() and np.array_equal(data, np.round(data))
    median_umis = np.median(np.asarray(adata.X.sum(1)).ravel())
    assert 2500 < median_umis < 7000
    info = json.loads((atlas["out"] / "generated.json").read_text())
    assert info["generated"] is True and info["statement"].startswith("GENERATED")
    assert info["n_cells"] == N_CELLS and info["n_genes"] == 765 and info["seed"] == 3
    assert info["source_profiles"] == "scanpy pbmc68k_reduced"
    assert atlas["meta"]["obs_columns"]["condition"] == "disease"


def test_progress_is_reported_up_to_done(atlas):
    fractions = atlas["progress"]
    assert fractions[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in fractions)
    assert fractions == sorted(fractions)


def test_output_depends_on_seed_not_on_chunking_format_or_workers(atlas, tmp_path):
    assert block_size(765) < N_CELLS  # the fixture spans several random-stream blocks
    out = generate_atlas(tmp_path / "same", N_CELLS, chunk_size=N_CELLS, seed=3, fmt="h5ad", n_jobs=2, **SMALL)
    other = ad.read_h5ad(out / "atlas.h5ad")
    ref = atlas["adata"]
    assert (other.X != ref.X).nnz == 0
    for key in ("cell_type", "disease", "donor_id", "batch"):
        assert other.obs[key].astype(str).tolist() == ref.obs[key].astype(str).tolist()
    assert load_truth(out)["perturbations"].equals(atlas["truth"]["perturbations"])
    changed = generate_atlas(tmp_path / "seed4", 200, seed=4, fmt="h5ad", **SMALL)
    assert (ad.read_h5ad(changed / "atlas.h5ad").X != ref.X[:200]).nnz > 0


def test_observed_composition_follows_the_truth(atlas):
    obs, truth = atlas["adata"].obs, atlas["truth"]
    observed = obs.groupby("disease", observed=True)["cell_type"].value_counts(normalize=True)
    dc = truth["donor_composition"].merge(truth["donors"][["donor_id", "cell_fraction"]], on="donor_id")
    dc["weighted"] = dc["proportion"] * dc["cell_fraction"]
    grouped = dc.groupby(["condition", "cell_type"])
    expected = grouped["weighted"].sum() / grouped["cell_fraction"].sum()
    for (cond, ct), value in expected.items():
        assert abs(observed.get((cond, ct), 0.0) - value) < 0.05, (cond, ct)
    comp = truth["composition"]
    for cond in ("disease A", "disease B"):
        rows = comp[comp["condition"] == cond]
        up = rows.loc[rows["multiplier"].idxmax(), "cell_type"]
        down = rows.loc[rows["multiplier"].idxmin(), "cell_type"]
        assert observed[(cond, up)] > observed[("normal", up)]
        assert observed[(cond, down)] < observed[("normal", down)]


def test_truth_de_gene_is_higher_in_its_condition_and_a_non_de_gene_is_not(atlas):
    adata, de = atlas["adata"], atlas["truth"]["de"]
    obs, x = adata.obs, lognorm(adata)
    col = {g: i for i, g in enumerate(adata.var_names)}
    counts = obs.groupby(["disease", "cell_type"], observed=True).size()
    big = de[[min(counts.get((c, t), 0), counts.get(("normal", t), 0)) >= 80
              for c, t in zip(de["condition"], de["cell_type"])]]
    row = big[(big["ref_cp10k"] > 5) & (big["log2fc"] > 1.2)].sort_values("log2fc").iloc[-1]
    sick = ((obs["disease"] == row["condition"]) & (obs["cell_type"] == row["cell_type"])).to_numpy()
    well = ((obs["disease"] == "normal") & (obs["cell_type"] == row["cell_type"])).to_numpy()

    def diff(gene: str) -> float:
        values = x[:, col[gene]].toarray().ravel()
        return values[sick].mean() - values[well].mean()

    assert diff(row["gene"]) > 0.5
    moved = set(de[(de["condition"] == row["condition"]) & (de["cell_type"] == row["cell_type"])]["gene"])
    genes = atlas["truth"]["genes"]
    steady = [g for g in genes[genes["ref_cp10k"] > 5]["gene"] if g not in moved]
    diffs = np.abs([diff(g) for g in steady])
    assert np.median(diffs) < 0.2 and diff(row["gene"]) > np.quantile(diffs, 0.99)


def test_regulator_target_correlation_has_the_sign_of_the_weight(atlas):
    adata, truth = atlas["adata"], atlas["truth"]
    x, obs = lognorm(adata), adata.obs
    col = {g: i for i, g in enumerate(adata.var_names)}
    level = truth["genes"].set_index("gene")["ref_cp10k"]
    edges = truth["grn"][(truth["grn"]["weight"].abs() >= 1.0)
                         & (level[truth["grn"]["regulator"]].to_numpy() > 10)
                         & (level[truth["grn"]["target"]].to_numpy() > 10)]
    assert len(edges) >= 10
    types = obs["cell_type"].value_counts().index[:4]
    agree = []
    for edge in edges.itertuples():
        corr = []
        for ct in types:
            m = (obs["cell_type"] == ct).to_numpy()
            corr.append(np.corrcoef(x[:, col[edge.regulator]].toarray().ravel()[m],
                                    x[:, col[edge.target]].toarray().ravel()[m])[0, 1])
        agree.append(np.sign(np.nanmean(corr)) == np.sign(edge.weight))
    assert np.mean(agree) >= 0.9


def test_knockout_in_the_sampler_matches_the_perturbation_truth(atlas, tmp_path):
    obs = atlas["adata"].obs
    cond, ct = obs.groupby(["disease", "cell_type"], observed=True).size().idxmax()
    truth = atlas["truth"]["perturbations"]
    ko = truth[(truth["mode"] == "ko") & (truth["condition"] == cond) & (truth["cell_type"] == ct)]
    visible = ko[(ko["role"] == "target") & (ko["control_cp10k"] > 5) & (ko["log2fc"].abs() > 0.3)]
    regulator = visible["regulator"].value_counts().index[0]
    rows = visible[visible["regulator"] == regulator]
    assert len(rows) >= 2
    out = generate_atlas(tmp_path / "ko", N_CELLS, seed=3, fmt="h5ad", perturbation={regulator: 0.0}, **SMALL)
    pert, ctrl = ad.read_h5ad(out / "atlas.h5ad"), atlas["adata"]
    col = {g: i for i, g in enumerate(ctrl.var_names)}
    assert pert.X[:, col[regulator]].nnz == 0 and ctrl.X[:, col[regulator]].nnz > 0
    cells = ((obs["disease"] == cond) & (obs["cell_type"] == ct)).to_numpy()
    ln_p, ln_c = lognorm(pert), lognorm(ctrl)
    for row in rows.itertuples():
        j = col[row.gene]
        observed = np.log2(pert.X[cells, j].sum() / ctrl.X[cells, j].sum())
        assert observed == pytest.approx(row.log2fc, abs=0.2)
        shift = ln_p[cells, j].mean() - ln_c[cells, j].mean()
        assert shift == pytest.approx(row.lognorm_shift_counts, abs=0.15)


def test_exact_truth_equals_the_sampler_mean_and_expected_effect(atlas):
    model = load_model(atlas["out"] / "truth" / "model.npz")
    grn = model.grn
    reg = model.genes[grn.regulators[0]]
    targets = grn.edge_target[grn.targets_of(0)]
    strength = np.ones(model.n_genes)
    strength[grn.regulators[0]] = 4.0
    exact = (model_log2_mean(model, strength) - model_log2_mean(model))[1, 2]
    cells = Sampler(model).draw_cells(np.random.default_rng(0), 20000, condition=1, cell_type=2)
    before = Sampler(model).relative_means(cells, perturbed=False)[:, targets].mean(0)
    after = Sampler(model, {reg: 4.0}).relative_means(cells)[:, targets].mean(0)
    np.testing.assert_allclose(np.log2(after / before), exact[targets], atol=0.02)

    effect = expected_effect(model, {reg: 4.0}, model.cell_types[2], model.conditions[1], n_cells=300,
                             seed=3).set_index("gene")
    table = atlas["truth"]["perturbations"]
    rows = table[(table["regulator"] == reg) & (table["mode"] == "oe") & (table["cell_type"] == model.cell_types[2])
                 & (table["condition"] == model.conditions[1])].set_index("gene")
    np.testing.assert_allclose(effect.loc[rows.index, "log2fc"], rows["log2fc"], rtol=1e-12)
    np.testing.assert_allclose(effect.loc[rows.index, "lognorm_shift"], rows["lognorm_shift"], atol=1e-9)
    assert rows.loc[reg, "log2fc"] == pytest.approx(2.0)
    untouched = effect.drop(index=rows.index)
    assert (untouched["log2fc"] == 0).all() and untouched["lognorm_shift"].abs().max() < 0.05


def test_truth_tables_cover_every_regulator_mode_and_population(atlas):
    truth = atlas["truth"]
    assert {"de", "composition", "donors", "donor_composition", "genes", "grn", "perturbations"} <= set(truth)
    pert = truth["perturbations"]
    n_reg = truth["grn"]["regulator"].nunique()
    assert n_reg == 30
    groups = pert.groupby(["regulator", "mode", "cell_type", "condition"]).ngroups
    assert groups == n_reg * len(MODES) * 10 * 3
    own = pert[pert["role"] == "regulator"].groupby("mode")["log2fc"]
    assert (own.max()["ko"] == -math.inf) and own.max()["kd"] == pytest.approx(-1.0)
    assert own.min()["oe"] == pytest.approx(2.0)
    assert (pert.loc[pert["role"] == "target", "log2fc"] != 0).all()
    ko_targets = pert[(pert["mode"] == "ko") & (pert["role"] == "target")]
    assert (np.sign(ko_targets["log2fc"]) == -np.sign(ko_targets["weight"])).all()
    assert set(truth["de"]["condition"]) == {"disease A", "disease B"}
    assert (truth["de"]["log2fc"] > 0).any() and (truth["de"]["log2fc"] < 0).any()
    comp = truth["composition"].groupby("condition")["proportion"].sum()
    np.testing.assert_allclose(comp, 1.0)
    readme = (atlas["out"] / "truth" / "README.md").read_text()
    assert "lognorm_shift" in readme and "GENERATED" in readme


def test_gene_count_adds_synthetic_genes_or_keeps_informative_real_ones(tmp_path):
    more = ad.read_h5ad(generate_atlas(tmp_path / "more", 50, n_genes=900, fmt="h5ad", truth_cells=20)
                        / "atlas.h5ad")
    assert more.n_vars == 900 and more.var["synthetic"].sum() == 135
    assert more.var_names[765] == "GEN-0001" and more.var_names[-1] == "GEN-0135"
    fewer = generate_atlas(tmp_path / "fewer", 50, n_genes=100, n_regulators=10, fmt="h5ad", truth_cells=20)
    genes = ad.read_h5ad(fewer / "atlas.h5ad").var_names
    assert len(genes) == 100 and not ad.read_h5ad(fewer / "atlas.h5ad").var["synthetic"].any()
    assert {"LYZ", "CD79A"} & set(genes)
    assert len(load_truth(fewer)["grn"]["regulator"].unique()) == 10


def test_genes_beyond_one_storage_tile_are_stored_exactly(tmp_path):
    """More genes than a TileDB tile is wide (2,048): chunks are re-sorted into tile order."""
    kwargs = {"n_genes": 2100, "seed": 1, "truth_cells": 20, "n_regulators": 5}
    soma_out = generate_atlas(tmp_path / "soma", 300, chunk_size=128, **kwargs)
    with soma.Experiment.open(str(soma_out / "atlas.soma")) as exp:
        stored = soma_io.to_anndata(exp, measurement_name="RNA", X_layer_name="counts")
    memory = ad.read_h5ad(generate_atlas(tmp_path / "h5ad", 300, fmt="h5ad", **kwargs) / "atlas.h5ad")
    assert stored.shape == (300, 2100) and (stored.X != memory.X).nnz == 0
    assert stored.X[:, 2048:].nnz > 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_cells": 0}, "n_cells"),
    ({"n_cells": 2.5}, "n_cells"),
    ({"conditions": ("normal",)}, "two conditions"),
    ({"conditions": ("normal", "normal")}, "distinct"),
    ({"conditions": ("disease A", "disease-A")}, "letters and digits"),
    ({"fmt": "zarr"}, "unknown format"),
    ({"fmt": "h5ad", "n_cells": 2_000_000}, "fmt='soma'"),
    ({"n_regulators": 500}, "n_regulators"),
    ({"n_genes": 5}, "n_genes"),
    ({"chunk_size": 0}, "chunk_size"),
])
def test_bad_input_gets_one_clear_sentence(tmp_path, kwargs, message):
    args = {"n_cells": 10, **kwargs}
    with pytest.raises(InputError, match=message):
        generate_atlas(tmp_path / "x", args.pop("n_cells"), **args)
    assert not (tmp_path / "x").exists()


def test_existing_output_needs_overwrite_and_failures_leave_nothing(tmp_path):
    out = generate_atlas(tmp_path / "a", 20, fmt="h5ad", truth_cells=20)
    with pytest.raises(FileExistsError, match="already exists"):
        generate_atlas(out, 20, fmt="h5ad", truth_cells=20)
    generate_atlas(out, 30, fmt="h5ad", truth_cells=20, overwrite=True)
    assert ad.read_h5ad(out / "atlas.h5ad").n_obs == 30
    with pytest.raises(GeneNotFoundError, match="Did you mean"):
        generate_atlas(tmp_path / "b", 20, fmt="h5ad", truth_cells=20, perturbation={"CD7A": 0.0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_load_truth_refuses_a_directory_without_tables(tmp_path):
    with pytest.raises(InputError, match="no truth tables"):
        load_truth(tmp_path)


def test_programme_and_regulator_genes_come_from_the_data_folder(atlas):
    from engine.data.shipped import SYNTH_PROGRAMMES, read_shipped_json

    lists = read_shipped_json(SYNTH_PROGRAMMES)  # data/synth_programmes.json
    model = load_model(atlas["out"] / "truth" / "model.npz")
    assert model.programmes.tolist() == ["", *(entry["name"] for entry in lists["shared_programmes"])]
    for condition, entry in enumerate(lists["shared_programmes"], start=1):
        members = set(model.genes[model.lfc_shared[condition].any(axis=0)])
        assert members == set(entry["genes"]) & set(model.genes)
    assert set(model.genes[model.grn.regulators]) & set(lists["known_tfs"])  # known TFs preferred as regulators
