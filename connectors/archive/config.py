"""Archive settings: where the DuckDB file lives and how the sink batches.

A plain pydantic model; ``spine.settings`` nests it as ``archive`` so every
knob is a ``SPINE_ARCHIVE__*`` variable or a config-file key.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_FILE = "archive.duckdb"


class ArchiveConfig(BaseModel):
    """The archive sink and the read path."""

    model_config = ConfigDict(extra="forbid")

    path: Path | None = Field(default=None, description="DuckDB file; unset: <data_dir>/archive.duckdb.")
    group: str = Field(default="archive", description="Consumer group of the sink.")
    batch_size: int = Field(
        default=5000,
        ge=1,
        le=100_000,
        description="Events per committed batch; DuckDB's cost per commit is ~10 ms, so bigger is cheaper.",
    )
    max_wait_s: float = Field(default=1.0, gt=0, description="Commit a partial batch after this long.")
    serve: bool = Field(default=True, description="The sink answers read-only queries while it holds the file.")
    query_timeout_s: float = Field(default=60.0, gt=0, description="A query served by the sink is stopped after this.")
    query_max_rows: int = Field(
        default=1_000_000, ge=1, description="A query served by the sink may return at most this many rows."
    )
    lock_timeout_s: float = Field(default=10.0, ge=0, description="How long to wait for a locked archive file.")

    def file(self, data_dir: Path) -> Path:
        """The archive file for ``data_dir`` unless ``path`` is set."""
        return self.path if self.path is not None else data_dir / DEFAULT_FILE
