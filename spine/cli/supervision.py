"""``spine sessions list|get`` and ``spine nodes list``: the supervisor's checkpointed view."""

from __future__ import annotations

from typing import Annotated

import typer

from spine.cli._common import emit, emit_json, run
from spine.cli.cost import load_states
from spine.errors import UsageError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
GroupOpt = Annotated[str | None, typer.Option(help="The supervisor's checkpoint group.")]
TenantOpt = Annotated[str | None, typer.Option(help="Only this tenant.")]

sessions_app = typer.Typer(help="Agent sessions as the supervisor sees them.", no_args_is_help=True)
nodes_app = typer.Typer(help="Nodes as the supervisor sees them.", no_args_is_help=True)

_SESSION_COLUMNS = [
    "tenant",
    "session",
    "status",
    "since",
    "node",
    "node_status",
    "project",
    "cost_usd",
    "last_command",
]


def register(app: typer.Typer) -> None:
    app.add_typer(sessions_app, name="sessions")
    app.add_typer(nodes_app, name="nodes")


@sessions_app.command("list", epilog="Examples: spine sessions list    |    spine sessions list --status idle --json")
def sessions_list(
    status: Annotated[str | None, typer.Option(help="running, idle, compacted, error or completed.")] = None,
    node: Annotated[str | None, typer.Option(help="Only sessions on this node.")] = None,
    project: Annotated[str | None, typer.Option(help="Only this project.")] = None,
    tenant: TenantOpt = None,
    group: GroupOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every session with its state, node and cost so far."""
    from processors.supervisor import session_rows

    rows = session_rows(run(load_states("supervisor", group)), tenant=tenant, status=status, node=node, project=project)
    columns = [c for c in _SESSION_COLUMNS if not rows or c in rows[0]] or None
    emit("Sessions", rows, as_json, columns=columns)


@sessions_app.command("get", epilog="Example: spine sessions get s-42")
def sessions_get(
    session_id: Annotated[str, typer.Argument(help="Session id.")],
    tenant: TenantOpt = None,
    group: GroupOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One session in full: state, retries, policies fired, cost."""
    from processors.supervisor import session_detail

    detail = session_detail(run(load_states("supervisor", group)), session_id, tenant=tenant)
    if detail is None:
        raise UsageError(f"the supervisor knows no session {session_id!r}", hint="see `spine sessions list`")
    if as_json:
        emit_json(detail)
    else:
        emit(f"Session {session_id}", [{"field": k, "value": v} for k, v in detail.items()], False)


@nodes_app.command("list", epilog="Examples: spine nodes list    |    spine nodes list --status offline --json")
def nodes_list(
    status: Annotated[str | None, typer.Option(help="online or offline.")] = None,
    tenant: TenantOpt = None,
    group: GroupOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every node the supervisor has heard from, online or offline (event time)."""
    from processors.supervisor import node_rows

    emit("Nodes", node_rows(run(load_states("supervisor", group)), tenant=tenant, status=status), as_json)
