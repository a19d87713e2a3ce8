"""Encoder, decoders, masks and augmentations: shapes, rates, exact likelihood values, determinism."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from engine.errors import InputError
from engine.models.augment import Compose, GaussianNoise, MaskGenes, NegBinomialResample, default_augmentations
from engine.models.decoders import MSEDecoder, NBDecoder, nb_loss
from engine.models.encoder import MLPEncoder
from engine.models.masking import GeneProgrammeMask, RandomMask, programmes_from_coexpression, read_gene_sets


def test_encoder_has_the_papers_architecture_and_shapes():
    enc = MLPEncoder(100)
    widths = [(m.in_features, m.out_features) for m in enc.linear_layers()]
    assert widths == [(100, 512), (512, 512), (512, 256), (256, 256), (256, 64)]
    kinds = [type(m).__name__ for m in enc.net]
    assert kinds[:4] == ["Linear", "SELU", "Dropout", "Linear"] and kinds[-1] == "Linear"
    assert enc(torch.rand(7, 100)).shape == (7, 64)
    layer = MLPEncoder(20, hidden=(8,), latent=3, norm="layer")
    assert [type(m).__name__ for m in layer.net] == ["Linear", "LayerNorm", "SELU", "Dropout", "Linear"]
    with pytest.raises(InputError, match=r"expects \(cells, 20\)"):
        layer(torch.rand(2, 21))
    with pytest.raises(InputError, match="Unknown normalisation"):
        MLPEncoder(20, norm="group")


def test_decoders_shapes_and_ranges():
    z = torch.randn(5, 8)
    mse = MSEDecoder(8, 30, hidden=(16,))
    assert mse(z).shape == (5, 30)
    sig = MSEDecoder(8, 30, hidden=(), output="sigmoid")
    out = sig(z * 100)
    assert out.min() >= 0 and out.max() <= 1
    nb = NBDecoder(8, 30, hidden=(16,)).eval()
    library = torch.tensor([100.0, 2000.0, 5.0, 1.0, 50.0])
    mu, theta = nb(z, library)
    assert mu.shape == (5, 30) and theta.shape == (30,)
    torch.testing.assert_close(mu.sum(1), library)
    torch.testing.assert_close(nb.log_normalised(z), torch.log1p(nb.proportions(z) * 1e4))


def test_nb_loss_equals_hand_computed_value():
    counts = torch.tensor([[0.0, 3.0], [5.0, 1.0]])
    mu = torch.tensor([[1.0, 2.0], [4.0, 0.5]])
    theta = torch.tensor([2.0, 0.5])

    def nll(x, m, t):
        return -(math.lgamma(x + t) - math.lgamma(t) - math.lgamma(x + 1)
                 + t * math.log(t / (t + m)) + x * math.log(m / (t + m)))

    values = [[nll(counts[i, j].item(), mu[i, j].item(), theta[j].item()) for j in range(2)] for i in range(2)]
    expected_all = float(np.mean(values))
    assert nb_loss(counts, mu, theta).item() == pytest.approx(expected_all, rel=1e-5)
    mask = torch.tensor([[False, True], [True, False]])
    assert nb_loss(counts, mu, theta, mask).item() == pytest.approx((values[0][1] + values[1][0]) / 2, rel=1e-5)
    # NB with theta -> infinity is Poisson: nll(0; mu=1) = 1
    assert nb_loss(torch.zeros(1, 1), torch.ones(1, 1), torch.tensor([1e7])).item() == pytest.approx(1.0, rel=1e-3)


def test_random_mask_hits_the_rate_exactly_and_is_seeded():
    mask = RandomMask(0.3)(64, 200, generator=torch.Generator().manual_seed(1))
    assert mask.dtype == torch.bool and mask.shape == (64, 200)
    assert (mask.sum(1) == 60).all()
    again = RandomMask(0.3)(64, 200, generator=torch.Generator().manual_seed(1))
    assert torch.equal(mask, again)
    assert not torch.equal(mask[0], mask[1])
    with pytest.raises(InputError, match="between 0 and 1"):
        RandomMask(1.0)


def test_programme_mask_covers_whole_programmes_near_the_rate():
    programmes = [np.arange(i, i + 10) for i in range(0, 100, 10)]  # 10 disjoint programmes of 10 genes
    masker = GeneProgrammeMask(programmes, rate=0.5)
    mask = masker(32, 120, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (32, 120)
    assert not mask[:, 100:].any()  # genes in no programme are never hidden
    for p in programmes:
        block = mask[:, p]
        assert (block.all(1) | ~block.any(1)).all()  # each programme all-or-nothing per cell
    assert (mask.sum(1) >= 60).all() and (mask.sum(1) <= 70).all()  # >= 0.5 * 120, overshoot < one programme
    per_cell = {tuple(row.tolist()) for row in mask}
    assert len(per_cell) > 1
    with pytest.raises(InputError, match="outside the model's 50 genes"):
        masker(2, 50)


def test_programmes_from_coexpression_recover_correlated_blocks():
    rng = np.random.default_rng(0)
    factors = rng.normal(size=(300, 3))
    x = np.concatenate([factors[:, [k]] + 0.3 * rng.normal(size=(300, 8)) for k in range(3)], axis=1)
    x = np.concatenate([np.abs(x), np.zeros((300, 2))], axis=1)  # two constant genes
    progs = programmes_from_coexpression(sp.csr_matrix(x), n_programmes=3, seed=0)
    assert sorted(tuple(p.tolist()) for p in progs) == [tuple(range(0, 8)), tuple(range(8, 16)), tuple(range(16, 24))]


def test_read_gene_sets_gmt_and_tsv(tmp_path):
    genes = ["CD3E", "CD3D", "MS4A1", "CD79A", "ENSG00000000003.14", "LYZ"]
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("T_CELL\thttp://x\tcd3e\tCD3D\tNOTAGENE\n"
                   "B_CELL\tna\tMS4A1\tCD79A\tENSG00000000003\n"
                   "TINY\tna\tLYZ\n")
    progs = read_gene_sets(gmt, genes)
    assert [p.tolist() for p in progs] == [[0, 1], [2, 3, 4]]
    tsv = tmp_path / "sets.tsv"
    tsv.write_text("set\tgene\nA\tLYZ\nA\tCD3E\nB\tMS4A1\n")
    assert [p.tolist() for p in read_gene_sets(tsv, genes, min_size=1)] == [[0, 5], [2]]
    with pytest.raises(InputError, match="No gene set"):
        read_gene_sets(gmt, ["X", "Y"])


def _view(seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.poisson(torch.rand(16, 40, generator=g) * 6, generator=g)
    x = torch.log1p(counts / counts.sum(1, keepdim=True).clamp_min(1) * 1e4)
    return {"x": x, "counts": counts}


def test_augmentations_are_count_aware_and_deterministic():
    view = _view()
    original = {k: v.clone() for k, v in view.items()}
    dropped = MaskGenes(0.5)(view, torch.Generator().manual_seed(0))
    zeroed = (dropped["x"] == 0) & (view["x"] > 0)
    assert zeroed.float().mean() > 0.3
    assert torch.equal(dropped["counts"] == 0, dropped["x"] == 0)
    noisy = GaussianNoise(0.5, p=1.0)(view, torch.Generator().manual_seed(0))
    assert noisy["x"].min() >= 0 and not torch.equal(noisy["x"], view["x"])
    nb = NegBinomialResample(theta=5.0, p=1.0)(view, torch.Generator().manual_seed(0))
    assert torch.equal(nb["counts"], nb["counts"].round()) and not torch.equal(nb["counts"], view["counts"])
    lib = nb["counts"].sum(1, keepdim=True)
    torch.testing.assert_close(nb["x"], torch.log1p(nb["counts"] / lib * 1e4))
    pipeline = default_augmentations()
    a = pipeline(view, torch.Generator().manual_seed(3))
    b = pipeline(view, torch.Generator().manual_seed(3))
    c = pipeline(view, torch.Generator().manual_seed(4))
    assert torch.equal(a["x"], b["x"]) and not torch.equal(a["x"], c["x"])
    assert all(torch.equal(view[k], original[k]) for k in view)  # inputs untouched
    assert isinstance(pipeline, Compose)
    with pytest.raises(InputError, match="raw counts"):
        NegBinomialResample()({"x": view["x"]})


def test_nb_resampling_keeps_the_mean():
    counts = torch.full((4000, 3), 20.0)
    out = NegBinomialResample(theta=4.0, p=1.0)({"x": torch.zeros(4000, 3), "counts": counts},
                                                torch.Generator().manual_seed(0))["counts"]
    assert out.mean().item() == pytest.approx(20.0, rel=0.03)
    assert out.var().item() == pytest.approx(20 + 20 ** 2 / 4, rel=0.1)  # NB variance mu + mu^2/theta
