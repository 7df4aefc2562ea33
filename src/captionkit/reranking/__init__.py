"""Re-ranking candidate captions by CIDEr-D (consensus with the nearest training images, minimum
Bayes risk), and the neighbour index of training images that consensus searches. Above the
metrics (it scores with CIDEr-D), below training (which writes the index)."""

from captionkit.reranking.neighbours import NeighbourIndex, write_neighbour_index
from captionkit.reranking.rerank import RERANKERS, Reranker, RerankOptions, run_reranker

__all__ = [
    "RERANKERS",
    "NeighbourIndex",
    "RerankOptions",
    "run_reranker",
    "Reranker",
    "write_neighbour_index",
]
