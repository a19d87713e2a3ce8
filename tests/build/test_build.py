"""vcell build on real data: the bundle is complete, valid and carries the known biology."""

import numpy as np
import pytest

from engine.bundle.atlas import read_atlas, validate_atlas
from engine.bundle.manifest import ColumnSource
from engine.compare.conditions import compare_conditions
from engine.errors import GeneNotFoundError
from engine.space.neighbours import find_neighbours


def test_covid_bundle_is_valid_and_harmonised(covid_bundle):
    assert validate_atlas(covid_bundle) == []
    atlas = read_atlas(covid_bundle)
    assert atlas.n_cells == 4591 and atlas.n_genes == 25456
    assert atlas.roles["condition"] == "disease" and atlas.roles["donor"] == "donor_id"
    assert atlas.reference_condition == "Healthy"
    assert set(atlas.categories("condition")) == {"Healthy", "Covid_Mild", "Covid_Critical"}
    # no labels in the input: Leiden clusters stand in, and the manifest says so
    assert atlas.categories("cell_type")[0].startswith("cluster ")
    assert "leiden" in atlas.manifest.harmonisation.cell_type.method
    assert atlas.manifest.harmonisation.disease == ColumnSource(source="condition", guessed=True)
    assert not atlas.generated and atlas.manifest.matrices.counts is not None


def test_covid_bundle_expression_matches_the_input(covid_bundle, shared_data):
    import anndata as ad

    atlas = read_atlas(covid_bundle)
    raw = ad.read_h5ad(shared_data("covid_pbmc_combat_subset.h5ad"))
    g = atlas.genes.resolve("ISG15")
    counts = np.asarray(raw[:, "ISG15"].X.todense()).ravel()
    lib = np.asarray(raw.X.sum(axis=1)).ravel()
    np.testing.assert_allclose(atlas.gene_values("ISG15"), np.log1p(counts / lib * 1e4), rtol=1e-4, atol=1e-5)
    cells = np.array([10, 4000, 7])
    np.testing.assert_allclose(atlas.expression(cells, np.array([g]), layer="counts").toarray().ravel(), counts[cells])
    with pytest.raises(GeneNotFoundError, match="Did you mean"):
        atlas.gene_values("ISG1S")


def test_covid_interferon_genes_up_in_critical(covid_bundle):
    atlas = read_atlas(covid_bundle)
    result = compare_conditions(atlas, "Healthy", "Covid_Critical")
    de = result.de.set_index("gene")
    for gene in ("IFI27", "ISG15", "IFI6"):
        assert de.loc[gene, "log2fc"] > 0.25 and de.loc[gene, "padj"] < 0.05, gene
    assert de.loc["IFI27", "log2fc"] > 3


def test_kang_bundle_stim_response_and_labels(kang_bundle):
    atlas = read_atlas(kang_bundle)
    assert atlas.manifest.harmonisation.cell_type.source == "seurat_annotations"
    assert atlas.roles["donor"] is None  # kang_ifnb_1k has no donors; nothing is invented
    de = compare_conditions(atlas, "CTRL", "STIM").de.set_index("gene")
    for gene in ("ISG15", "IFIT1", "MX1"):
        assert de.loc[gene, "log2fc"] > 1 and de.loc[gene, "padj"] < 1e-3, gene
    # the embedding keeps cell types together: measured, and recorded in the manifest
    assert atlas.manifest.quality["knn_label_agreement"] > 0.7
    mono = np.flatnonzero(atlas.obs["cell_type"] == "CD14 Mono")[:1]
    found = find_neighbours(atlas, mono, k=20)
    assert found.summary.breakdown["cell_type"]["value"].iloc[0] == "CD14 Mono"
    assert mono[0] not in found.cells
