"""`isco keys create|list|revoke`: API keys for the gateway (stored hashed; the key is shown once)."""

from __future__ import annotations

import json

import typer

from services.gateway.auth import create_api_key, list_api_keys, revoke_api_key
from services.gateway.settings import GatewaySettings
from shared.db.session import session_scope

app = typer.Typer(help="API keys for the gateway.", no_args_is_help=True)


@app.command("create")
def create(name: str = typer.Argument(..., help="who or what the key is for")) -> None:
    """Create a key and print it (it cannot be shown again)."""
    settings = GatewaySettings()
    with session_scope(settings.db_url) as session:
        key, row = create_api_key(session, name, settings.secret_key)
        key_id, prefix = row.id, row.prefix
    typer.echo(key)
    typer.echo(f"created key {key_id} ({prefix}...) for {name!r}: it is not shown again", err=True)


@app.command("list")
def list_keys(as_json: bool = typer.Option(False, "--json", help="JSON lines")) -> None:
    """List keys (id, prefix, name, created, last used, revoked)."""
    settings = GatewaySettings()
    with session_scope(settings.db_url) as session:
        rows = [
            {
                "id": k.id,
                "prefix": k.prefix,
                "name": k.name,
                "created_at": k.created_at.isoformat() if k.created_at else None,
                "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            }
            for k in list_api_keys(session)
        ]
    for row in rows:
        if as_json:
            typer.echo(json.dumps(row))
        else:
            state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
            typer.echo(f"{row['id']:>4}  {row['prefix']}...  {state:<12}  {row['name']}")


@app.command("revoke")
def revoke(key: str = typer.Argument(..., help="key id or the prefix shown by `isco keys list`")) -> None:
    """Revoke a key: requests with it get 401 (within the gateway's key cache time, a few seconds)."""
    settings = GatewaySettings()
    with session_scope(settings.db_url) as session:
        row = revoke_api_key(session, key)
        if row is None:
            typer.echo(f"no key {key!r}", err=True)
            raise typer.Exit(1)
        typer.echo(f"revoked key {row.id} ({row.prefix}...) for {row.name!r}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
