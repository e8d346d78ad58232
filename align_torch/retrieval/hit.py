"""One search result, the same for an embeddings folder (Collection) and a single embeddings file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Hit:
    """One result: its rank, collection row id, cosine similarity, and what the collection knows of the row."""

    rank: int
    id: int
    score: float
    image_path: str | None = None
    caption: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # WebDataset key and url, when present
    target: str = "image"  # which embeddings matched: the row's image or its caption

    @property
    def item(self) -> str:
        """What a person reads for the row: the matched image's path or caption, else the other, else the id."""
        first, second = (self.caption, self.image_path) if self.target == "text" else (self.image_path, self.caption)
        return first if first is not None else second if second is not None else str(self.id)

    def to_dict(self) -> dict[str, Any]:
        out = {"rank": self.rank, "id": self.id, "score": self.score, "item": self.item, "target": self.target}
        out.update({"image_path": self.image_path, "caption": self.caption, **self.extra})
        return out
