"""The processor model (re-exported from ``streams.processing``, where the runner sees it).

A processor is a pure, deterministic fold ``handle(state, event) -> outputs``
(``Emit`` decisions, ``Reject`` to dead-letter the input); see
``streams.processing`` for the full contract.
"""

from streams.processing import (
    Cause,
    Emit,
    Output,
    Processor,
    PureRun,
    Reject,
    RowInput,
    RowProcessor,
    materialize,
    run_pure,
)

__all__ = [
    "Cause",
    "Emit",
    "Output",
    "Processor",
    "PureRun",
    "Reject",
    "RowInput",
    "RowProcessor",
    "materialize",
    "run_pure",
]
