"""``seediff serve``: the Label Studio ML backend (loaded lazily by the seediff command)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--host", default=None, help="Interface to bind (env HOST, default 0.0.0.0).")
@click.option("--port", type=int, default=None, help="Port (env PORT, default 9090).")
@click.option("--model", default=None, help="'shapes-world', a local SD folder or a hub id (env SEEDIFF_MODEL).")
@click.option("--method", default=None, help="Segmentation method (env SEEDIFF_METHOD).")
@click.option("--device", default=None, help="cuda, mps or cpu (env SEEDIFF_DEVICE).")
@click.option("--workers", type=int, default=None, help="Processes; each loads the model (env WORKERS, default 1).")
@click.option("--threads", type=int, default=None, help="Request threads per process (env THREADS, default 8).")
@click.option("--model-dir", type=click.Path(path_type=Path), default=None, help="Caches and state (env MODEL_DIR).")
def serve(host, port, model, method, device, workers, threads, model_dir):
    """Serve the Label Studio ML backend on HOST:PORT."""
    from .server import serve as run_server
    from .settings import BackendSettings

    try:
        settings = BackendSettings.from_env(host=host, port=port, model=model, workers=workers, threads=threads,
                                            model_dir=model_dir, method=method, device=device)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"seediff backend on http://{settings.host}:{settings.port} with model {settings.model}", err=True)
    run_server(settings)
