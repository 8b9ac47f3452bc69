"""The example notebooks in the user's home: copied once, updated while untouched, the user's
edits kept."""

from __future__ import annotations

from importlib import resources

from bioimage_gateway.extensions.examples import install_examples

SHIPPED = resources.files("bioimage_gateway.extensions").joinpath("notebooks", "getting-started.ipynb")


def test_copied_updated_while_untouched_and_edits_kept(tmp_path):
    mine = tmp_path / "bioimage-gateway" / "getting-started.ipynb"
    assert install_examples(tmp_path) == [mine]
    assert mine.read_bytes() == SHIPPED.read_bytes()
    assert install_examples(tmp_path) == []  # nothing new at the next start

    # an older release's copy, untouched by the user: replaced by the new one
    old = b'{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}\n'
    mine.write_bytes(old)
    (mine.parent / ".copied.json").write_text('{"getting-started.ipynb": "%s"}'
                                              % __import__("hashlib").sha256(old).hexdigest())
    assert install_examples(tmp_path) == [mine]
    assert mine.read_bytes() == SHIPPED.read_bytes()

    # the user's own edits: kept, whatever the gateway ships
    mine.write_text(mine.read_text().replace("getting started", "my analysis"))
    edited = mine.read_bytes()
    assert install_examples(tmp_path) == []
    assert mine.read_bytes() == edited
