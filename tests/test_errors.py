"""One-sentence errors (engine.errors): close-name suggestions and the error hierarchy."""

from __future__ import annotations

from engine.errors import (
    BundleError,
    EmptySelectionError,
    GeneNotFoundError,
    InputError,
    MissingKeyError,
    VCellError,
    suggest,
)


def test_suggest_names_close_matches_only():
    assert suggest("CD41", ["CD14", "CD4", "MS4A1"]).startswith(" Did you mean:")
    assert "CD14" in suggest("cd14", ["CD14", "LYZ"])
    assert suggest("XYZZY", ["CD14", "LYZ"]) == ""
    assert suggest("CD4", []) == ""


def test_user_errors_share_one_base_the_cli_turns_into_a_sentence():
    for error in (InputError, BundleError, EmptySelectionError, GeneNotFoundError):
        assert issubclass(error, VCellError)


def test_suggestions_keep_the_known_spelling_and_their_number_is_bounded():
    choices = ["CD14", "CD16", "CD19", "CD1A", "CD1C"]
    assert suggest("cd1", choices, n=2).count(",") == 1
    assert suggest("cd14", choices, n=1) == " Did you mean: CD14?"


def test_a_missing_gene_reads_as_plain_text_and_a_missing_key_as_bad_input():
    error = GeneNotFoundError("Gene 'XYZ' is not in this atlas.")
    assert str(error) == "Gene 'XYZ' is not in this atlas." and isinstance(error, KeyError)
    assert str(GeneNotFoundError()) == "gene not found"
    assert issubclass(MissingKeyError, InputError)
