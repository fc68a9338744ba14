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
@click.option("--threads", type=int, default=None, help="Request threads per process (env THREADS, default 48).")
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


@click.command()
@click.option("--project", type=int, default=None, help="Label Studio project id (LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY from the env).")
@click.option("--view", type=int, default=None, help="Only the tasks of this Data Manager view (tab) id.")
@click.option("--tasks", "task_ids", default=None, help="Only these task ids, e.g. 1,2,5-9.")
@click.option("--limit", type=int, default=None, help="At most this many tasks.")
@click.option("--from", "source", type=click.Path(exists=True, path_type=Path), default=None,
              help="Instead of a project: a tasks JSON or a folder of images ...")
@click.option("--to", "target", type=click.Path(path_type=Path), default=None,
              help="... and the tasks JSON with predictions to write (import it into Label Studio).")
@click.option("--config", "config_file", type=click.Path(exists=True, path_type=Path), default=None,
              help="With --from: the labeling config XML (default: BrushLabels of --labels).")
@click.option("--labels", multiple=True, help="With --from and no --config: label names.")
@click.option("--model", default=None, help="'shapes-world', a local SD folder or a hub id (env SEEDIFF_MODEL).")
@click.option("--method", default=None, help="Segmentation method (env SEEDIFF_METHOD).")
@click.option("--device", default=None, help="cuda, mps or cpu (env SEEDIFF_DEVICE).")
@click.option("--set", "extra", multiple=True, metavar="NAME=VALUE",
              help="Any setting or extra param, as the connection's Extra params (JSON values).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Tasks per model call and per upload.")
@click.option("--force", is_flag=True, help="Predict again tasks that hold a prediction of this model version.")
@click.option("--dry-run", is_flag=True, help="Count what would be predicted and skipped; predict nothing.")
@click.option("--order", type=click.Choice(["none", "uncertainty"]), default="none", show_default=True,
              help="uncertainty: make the project's model version this run's even over one chosen by hand (without "
                   "it, only an empty, a backend-title or an older seediff version is replaced), so the Data Manager "
                   "sorted by prediction score, ascending, lists the least certain tasks first.")
@click.option("--report", "report_file", type=click.Path(path_type=Path), default=None, help="Write the run's report (JSON).")
@click.option("--model-dir", type=click.Path(path_type=Path), default=None, help="Caches and state (env MODEL_DIR).")
@click.option("--ray", "use_ray", is_flag=True, help="Run on Ray Data (pip install 'seediff[ray]'): fetch, segment "
              "(an actor pool, the model loaded once per actor) and upload as streaming stages.")
@click.option("--address", default=None, help="With --ray: 'auto' or ray://host:10001 (default: start a local Ray).")
@click.option("--workers", type=int, default=1, show_default=True, help="With --ray: segmentation actors.")
@click.option("--gpus-per-worker", type=float, default=0.0, show_default=True, help="With --ray: GPUs per actor (1 = one actor per GPU).")
def prelabel(project, view, task_ids, limit, source, target, config_file, labels, model, method, device, extra,
             batch_size, force, dry_run, order, report_file, model_dir, use_ray, address, workers, gpus_per_worker):
    """Pre-label a whole Label Studio project (or a tasks file / image folder) with progress, resume and a report.

    Exit code 0 when every task was predicted or skipped, 1 when some failed, 2 on usage errors."""
    import json
    import sys

    from tqdm import tqdm

    from . import prelabel as bulk
    from .fetch import TokenProvider
    from .project_version import sync_project_version
    from .settings import BackendSettings

    def usage(message: str):
        click.echo(f"seediff prelabel: {message}", err=True)
        sys.exit(2)

    if (project is None) == (source is None):
        usage("give --project ID (a Label Studio project) or --from tasks.json|folder (with --to out.json)")
    if source is not None and target is None and not dry_run:
        usage("--from needs --to out.json, where the tasks with their predictions go")
    from seediff_core.config import parse_assignments

    try:
        params = parse_assignments(extra)
    except ValueError as exc:
        usage(f"--set: {exc}")
    try:
        overrides = dict(model=model, model_dir=model_dir, method=method, device=device)
        if source is not None:
            tasks, root = bulk.tasks_from(source)
            if root is not None:
                overrides["local_files_root"] = root.resolve()
            settings = BackendSettings.from_env(**overrides)
            if config_file is not None:
                config = config_file.read_text()
            elif labels:
                config = bulk.default_config([l.strip() for ls in labels for l in ls.split(",") if l.strip()])
            else:
                usage("with --from, give --config config.xml or --labels")
            client = None
        else:
            settings = BackendSettings.from_env(**overrides)
            client = bulk.connect(settings)
            config = bulk.project_config(client, project)
            ids = bulk.parse_task_ids(task_ids) if task_ids else None
            tasks = None
        if limit is not None and source is not None:
            tasks = tasks[:limit]
        # The model starts loading here, while the project's tasks are listed ...
        job = bulk.Prelabeler(settings, config, params, chunk=batch_size, load_model=not (use_ray or dry_run),
                              project_id=str(project) if project is not None else "prelabel")
        if tasks is None:
            tasks = list(bulk.project_tasks(client, project, view, ids, limit))
        job.wait_for_model()  # ... and a model that cannot load is said once, before any task is touched
    except (bulk.UsageError, ValueError) as exc:
        usage(str(exc))
    version = job.model_version
    skip = (lambda task: False) if force else (lambda task: bulk.has_version(task, version))
    if dry_run:
        listed = list(tasks)
        skipped = sum(skip(t) for t in listed)
        click.echo(f"model version {version}: {len(listed) - skipped} tasks to predict, {skipped} to skip")
        return
    written: list[dict] = []
    upload = bulk.import_to_project(client, project) if client is not None else \
        (lambda pairs: written.extend({**task, "predictions": [*(task.get("predictions") or []), p]} for task, p in pairs))
    bar = tqdm(total=len(tasks), unit="task", dynamic_ncols=True, file=sys.stderr)

    def progress(kind, n, report):
        bar.update(n)
        bar.set_postfix(done=len(report.done), skipped=len(report.skipped), failed=len(report.failed))

    if use_ray:
        try:
            from .prelabel_ray import run_on_ray
        except ImportError as exc:
            usage(f"--ray needs Ray: pip install 'seediff[ray]' ({exc})")
        by_id = {t.get("id"): t for t in tasks}
        report = run_on_ray(settings, config, params, tasks, project_id=project if client is not None else None,
                            address=address, workers=workers, gpus_per_worker=gpus_per_worker, batch_size=batch_size,
                            skip=skip, progress=progress,
                            collect=lambda task_id, p: upload([(by_id[task_id], p)]) if client is None else None)
    else:
        report = job.run(tasks, upload, progress, skip)
    bar.close()
    if client is not None and report.done:
        # The Data Manager's score column counts the project's model version only; --order uncertainty
        # sets it even over a version chosen by hand.
        tokens = TokenProvider(settings.label_studio_url, settings.api_key, settings.fetch_timeout)
        if sync_project_version(settings.label_studio_url, tokens, project, version, force=order == "uncertainty") == "chosen":
            click.echo(f"the project keeps the model version chosen in its settings; choose {version} there (or "
                       "pass --order uncertainty) to see these predictions' scores in the Data Manager")
    if target is not None:
        failed_ids = set(report.failed)
        kept = [t for t in tasks if str(t.get("id")) in failed_ids or skip(t)]
        target.write_text(json.dumps(written + kept, indent=1))
    click.echo(report.table())
    if report_file is not None:
        report_file.write_text(json.dumps(report.to_json(), indent=2))
    sys.exit(report.exit_code)


@click.command("eval")
@click.option("--truth", required=True, help="Label Studio export JSON, VOC folder or COCO JSON.")
@click.option("--pred", required=True, help="project:ID (Label Studio predictions), a seediff output folder, or a truth format.")
@click.option("--labels", multiple=True, help="Labels to score (default: the truth's); VOC class names in index order.")
@click.option("--model-version", default=None, help="Only predictions of this model version.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write metrics.json and index.html here.")
def evaluate(truth, pred, labels, model_version, out):
    """Per-label IoU, precision, recall and mIoU of predictions against ground truth, and how well
    the scores predict IoU (Spearman)."""
    import json

    from . import evaluate as ev

    names = [l.strip() for ls in labels for l in ls.split(",") if l.strip()] or None
    try:
        true = ev.read(truth, "truth", names)
        predicted = ev.read(pred, "pred", names, model_version)
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        raise click.UsageError(str(exc)) from exc
    if not true:
        raise click.UsageError(f"{truth}: no annotated image found")
    evaluation = ev.evaluate(true, predicted, names)
    metrics = ev.write_report(evaluation, true, predicted, out) if out is not None else evaluation.metrics()
    click.echo(ev.table(metrics))
    if out is not None:
        click.echo(f"report: {out / 'index.html'}")
