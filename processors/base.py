"""The processor model (re-exported from ``streams.processing``, where the runner sees it).

A processor is a pure, deterministic fold ``handle(state, event) -> outputs``
(``Emit`` decisions, ``Reject`` to dead-letter the input); see
``streams.processing`` for the full contract.
"""

from streams.processing import Emit, Output, Processor, PureRun, Reject, materialize, run_pure

__all__ = ["Emit", "Output", "Processor", "PureRun", "Reject", "materialize", "run_pure"]
