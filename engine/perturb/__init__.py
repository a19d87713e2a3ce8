"""The virtual cell: the perturbation spec (:mod:`.spec`), co-expression baselines (:mod:`.coexpression`),
the masked-autoencoder counterfactual (:mod:`.virtual_cell`, :mod:`.ensemble`, :mod:`.landing`,
:mod:`.counterfactual`), the entry point (:mod:`.predict`), across conditions, baselines and evaluation.
"""
