"""One-sentence errors (engine.errors): close-name suggestions and the error hierarchy."""

from __future__ import annotations

from engine.errors import BundleError, EmptySelectionError, GeneNotFoundError, InputError, VCellError, suggest


def test_suggest_names_close_matches_only():
    assert suggest("CD41", ["CD14", "CD4", "MS4A1"]).startswith(" Did you mean:")
    assert "CD14" in suggest("cd14", ["CD14", "LYZ"])
    assert suggest("XYZZY", ["CD14", "LYZ"]) == ""
    assert suggest("CD4", []) == ""


def test_user_errors_share_one_base_the_cli_turns_into_a_sentence():
    for error in (InputError, BundleError, EmptySelectionError, GeneNotFoundError):
        assert issubclass(error, VCellError)
