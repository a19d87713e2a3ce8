"""FAISS index: factory choice, exactness, IVF tuning to the recall target, save/load."""

import numpy as np
import pytest

from engine.errors import BundleError, InputError
from engine.space.index import build_index, choose_factory, load_index, recall_at_k, save_index, search


def clustered(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, size=(20, dim))
    return (centres[rng.integers(0, 20, n)] + rng.normal(0, 1, size=(n, dim))).astype(np.float32)


def test_choose_factory_by_size():
    assert choose_factory(1_000, 50) == "Flat"
    assert choose_factory(10_000_000, 64) == "IVF16384_HNSW32,Flat"  # 4 * sqrt(n) lists, rounded to a power of 2


def test_flat_index_returns_each_point_as_its_own_neighbour(tmp_path):
    x = clustered(500)
    index, info = build_index(x)
    assert info.factory == "Flat" and info.n == 500
    _, ids = search(index, x[:20], 1)
    assert (ids[:, 0] == np.arange(20)).all()
    save_index(index, tmp_path / "x.faiss")
    again = load_index(tmp_path / "x.faiss")
    assert again.ntotal == 500


@pytest.mark.parametrize("factory", ["IVF64,Flat", "IVF64_HNSW32,Flat"])
def test_ivf_is_tuned_to_the_recall_target(factory, tmp_path):
    x = clustered(20_000)
    index, info = build_index(x, factory=factory, target_recall=0.95)
    assert info.nprobe is not None and info.recall_at_10 >= 0.95
    # the recall is real: recompute it independently against brute force
    q = x[::97][:200]
    d = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    truth = np.argsort(d, axis=1)[:, :10]
    _, found = index.search(q, 10)
    assert recall_at_k(found, truth) >= 0.9
    save_index(index, tmp_path / "ivf.faiss")  # the tuned search breadth survives a round trip
    _, again = load_index(tmp_path / "ivf.faiss", nprobe=info.nprobe).search(q, 10)
    assert recall_at_k(again, truth) >= 0.9


def test_bad_embeddings_are_refused(tmp_path):
    x = clustered(50)
    x[3, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        build_index(x)
    with pytest.raises(InputError, match="empty"):
        build_index(np.zeros((0, 4), dtype=np.float32))
    with pytest.raises(BundleError, match="missing"):
        load_index(tmp_path / "nope.faiss")


def test_hnsw_quantizer_explores_at_least_twice_the_lists_probed(tmp_path):
    import faiss

    from engine.space.index import set_nprobe

    index, info = build_index(clustered(20_000), factory="IVF64_HNSW32,Flat")
    set_nprobe(index, 40)  # more lists than FAISS's default efSearch (16) would return well
    ivf = faiss.extract_index_ivf(index)
    assert ivf.nprobe == 40 and faiss.downcast_index(ivf.quantizer).hnsw.efSearch >= 80
    save_index(index, tmp_path / "ivf.faiss")
    again = load_index(tmp_path / "ivf.faiss", nprobe=40)
    loaded = faiss.extract_index_ivf(again)  # a view into `again`, which must stay alive
    assert loaded.nprobe == 40 and faiss.downcast_index(loaded.quantizer).hnsw.efSearch >= 80


def test_ivf_training_uses_gpus_only_when_present():
    import faiss

    from engine.space.index import use_gpus_for_training

    index = faiss.index_factory(16, "IVF64,Flat")
    used = use_gpus_for_training(index)
    assert used == (hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0)
    if not used:
        pytest.skip("no GPU (faiss-cpu): training stays on the CPU; the GPU path runs where faiss-gpu sees one")
    x = clustered(20_000)
    index, info = build_index(x, factory="IVF64,Flat", target_recall=0.95)
    assert info.recall_at_10 >= 0.95
