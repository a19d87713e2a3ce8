"""Label transfer from a labelled reference (:mod:`.label_transfer`, on cells read by :mod:`.cell_data`)
and applying it to a bundle (:mod:`.apply`).
"""
