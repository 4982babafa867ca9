"""Partitioned state and the pure fold (re-exported from ``streams.processing``)."""

from streams.processing import (
    DEFAULT_PARTITIONS,
    DEFAULT_SEEN_IDS,
    Partition,
    fold,
    fold_row,
    owned_partitions,
    partition_key,
    partition_of,
    run_partitioned,
    run_partitioned_rows,
)

__all__ = [
    "DEFAULT_PARTITIONS",
    "DEFAULT_SEEN_IDS",
    "Partition",
    "fold",
    "fold_row",
    "owned_partitions",
    "partition_key",
    "partition_of",
    "run_partitioned",
    "run_partitioned_rows",
]
