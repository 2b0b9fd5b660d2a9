"""Flatten an image into a plain directory (``--output type=local``): layers applied in order."""
from __future__ import annotations

from pathlib import Path

from .layers import extract_layer, open_decompressed
from .store import Image, Store

__all__ = ["flatten_image"]


def flatten_image(store: Store, image: Image, dest: Path) -> None:
    """Apply every layer of ``image`` (whiteouts applied) into ``dest`` (created if missing).

    Every blob is verified. Raises DigestMismatch, InvalidArchive, UnsafeLayer.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for layer in image.manifest.layers:
        with store.content.open_blob(layer.digest, layer.size) as blob:
            extract_layer(open_decompressed(blob, layer.media_type), dest, mode="apply")  # type: ignore[arg-type]
            blob.finish()
