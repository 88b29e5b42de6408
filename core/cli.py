"""The ``plmforge`` command.

Fast commands (``--help``, ``plugins``, ``validate``, ``schema``) import neither torch nor jax nor
mlflow: everything heavy is imported inside the command that needs it. A user error prints one
message and exits 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click

from plmforge.core import __version__
from plmforge.core.errors import PlmforgeError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PlmforgeError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="plmforge")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Pretrain and evaluate protein language models from one spec file."""
    ctx.obj = {"debug": debug}


_SET = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                    help="Override a spec value, e.g. --set training.steps=200 --set objectives[0].weight=2.")


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in the output directory "
              "(with --seeds: each replicate from its own; finished replicates are skipped).")
@click.option("--seeds", default=None, metavar="LIST",
              help="Train seed replicates one after another, e.g. 0,1,2 or 0-2: each in <output_dir>/seed-<s>, "
                   "its own MLflow run named '<name> seed <s>'; `plmforge compare` pools them into one row.")
@_SET
@click.option("--no-progress", is_flag=True, help="No progress bar or step lines.")
def train(spec: Path, resume: bool, seeds: str | None, overrides: tuple[str, ...], no_progress: bool) -> None:
    """Pretrain a model as SPEC describes, logging to MLflow."""
    from plmforge.core.run import parse_seeds, train_replicates
    from plmforge.core.run import train as run_training
    from plmforge.core.spec import load_spec

    chosen = parse_seeds(seeds) if seeds is not None else None
    loaded = load_spec(spec, list(overrides), check_machine=True)
    try:
        if chosen is None:
            _report_training(loaded, run_training(loaded, resume=resume, show_progress=not no_progress,
                                                  spec_path=spec, overrides=list(overrides)))
            return

        def starting(seed: int, replicate, action: str) -> None:
            what = {"train": "training", "resume": "resuming", "skip": "already finished, skipped:"}[action]
            click.echo(f"replicate seed {seed} ({chosen.index(seed) + 1}/{len(chosen)}): {what} "
                       f"{replicate.resolved_output_dir}")

        done = train_replicates(loaded, chosen, resume=resume, on_start=starting,  # a failure names its seed
                                on_result=lambda seed, replicate, result: _report_training(replicate, result),
                                show_progress=not no_progress, spec_path=spec, overrides=list(overrides))
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    if done and done[0][1].main_process:
        click.echo(f"{len(done)} replicate(s) of {loaded.name!r} trained (seeds {', '.join(str(s) for s, _ in done)}); "
                   f"compare them pooled: plmforge compare -e {loaded.tracking.experiment!r}")


def _report_training(loaded, result) -> None:
    """What ``train`` prints after a run: final metrics, task outcomes, checkpoint and MLflow run."""
    if not result.main_process:  # torchrun: the main process reports
        return
    click.echo(f"finished {result.step} steps of {loaded.name!r}")
    for key in ("train/loss",):
        if key in result.train_metrics:
            click.echo(f"  {key:<40} {result.train_metrics[key]:.4f}")
    for key, value in sorted(result.eval_metrics.items()):
        if not re.search(r"/p\d", key):  # per masking probability: in MLflow, too many to print
            click.echo(f"  {key:<40} {value:.4f}")
    if result.tasks:
        from plmforge.core.evaluation import outcomes_table

        click.echo("downstream tasks (test split):")
        click.echo(outcomes_table(result.tasks))
    if result.checkpoint:
        click.echo(f"  checkpoint: {result.checkpoint}")
    if result.tracking_run_id and not result.tracking_failure:
        from plmforge.core.tracking import resolve_tracking_uri, runs_page_hint

        uri = resolve_tracking_uri(loaded.tracking.tracking_uri)
        click.echo(f"  MLflow run {result.tracking_run_id} in experiment {loaded.tracking.experiment!r} at {uri}")
        for line in runs_page_hint(uri, result.tracking_experiment_id):
            click.echo(f"  {line}")
    elif result.tracking_failure:
        click.echo(f"  tracking: {result.tracking_failure}", err=True)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="A checkpoint directory, or a run directory (its latest checkpoint).")
@click.option("--embeddings", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Score precomputed per-residue embeddings (a .safetensors file as `plmforge embed` writes, "
                   "one tensor per protein of --write-proteins) as the model's row, instead of a checkpoint.")
@click.option("--write-proteins", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Only write the proteins the spec's tasks use to this FASTA (ids are sequence digests), "
                   "to embed with any model for --embeddings.")
@_SET
@click.option("--json", "as_json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the metrics of every task and reference row to this JSON file.")
@click.option("--no-progress", is_flag=True, help="No progress lines.")
def evaluate(spec: Path, checkpoint: Path | None, embeddings: Path | None, write_proteins: Path | None,
             overrides: tuple[str, ...], as_json: Path | None, no_progress: bool) -> None:
    """Run the downstream tasks of SPEC on a checkpoint (or on precomputed embeddings), as an MLflow
    evaluation run with nested task runs. See docs/references.md for scoring any model's embeddings."""
    from plmforge.core.spec import load_spec

    given = [name for name, value in (("--checkpoint", checkpoint), ("--embeddings", embeddings),
                                      ("--write-proteins", write_proteins)) if value is not None]
    if len(given) != 1:
        raise PlmforgeError("give one of --checkpoint, --embeddings or --write-proteins"
                            + (f" (got {' and '.join(given)})" if given else ""))
    loaded = load_spec(spec, list(overrides))
    if write_proteins is not None:
        from plmforge.core.precomputed import write_task_proteins

        count, tasks = write_task_proteins(loaded, write_proteins)
        click.echo(f"wrote {count} proteins of {tasks} task{'s' if tasks != 1 else ''} to {write_proteins}; embed "
                   f"them (e.g. `plmforge embed CHECKPOINT {write_proteins} -o embeddings.safetensors`) and run "
                   f"`plmforge evaluate {spec} --embeddings embeddings.safetensors`")
        return
    from plmforge.core.evaluation import evaluate_checkpoint, outcomes_json, outcomes_table
    from plmforge.core.progress import say, warn

    quiet = (lambda text: None) if no_progress else say
    if embeddings is not None:
        from plmforge.core.precomputed import evaluate_embeddings

        outcomes, run_id = evaluate_embeddings(loaded, embeddings, say=quiet, warn=warn)
    else:
        outcomes, run_id = evaluate_checkpoint(loaded, checkpoint, say=quiet, warn=warn, spec_path=spec,
                                               overrides=list(overrides))
    click.echo(outcomes_table(outcomes))
    if as_json is not None:
        as_json.write_text(outcomes_json(outcomes) + "\n")
    if run_id:
        click.echo(f"MLflow evaluation run {run_id} in experiment {loaded.tracking.experiment!r}")


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@_SET
@click.option("--print", "print_spec", is_flag=True, help="Print the resolved spec (all defaults filled).")
def validate(spec: Path, overrides: tuple[str, ...], print_spec: bool) -> None:
    """Check SPEC (and the plugins and files it names) without training."""
    from plmforge.core.run import check_inputs
    from plmforge.core.spec import load_spec

    loaded = load_spec(spec, list(overrides), check_machine=True)  # the files, devices and output it needs too
    check_inputs(loaded, str(spec))
    if print_spec:
        click.echo(loaded.to_yaml(), nl=False)
        return
    from plmforge.core.progress import warn
    from plmforge.core.spec import spec_warnings

    for message in spec_warnings(loaded):
        warn(message)
    objectives = ", ".join(f"{e.label or e.name} (weight {e.weight:g})" for e in loaded.objectives)
    click.echo(f"{spec}: valid")
    click.echo(f"  backend {loaded.backend.name}; objectives {objectives}")
    click.echo(f"  model {loaded.model.preset or 'custom'}: d_model {loaded.model.d_model}, "
               f"{loaded.model.num_layers}+{loaded.model.num_decoder_layers} layers")
    click.echo(f"  {loaded.training.steps} steps; output {loaded.resolved_output_dir}")
    if loaded.tasks:
        tasks = ", ".join(f"{t.label or t.name} ({t.name})" for t in loaded.tasks)
        references = ", ".join(r.reference_label() for r in loaded.evaluation.references) or "none"
        click.echo(f"  tasks {tasks}; references {references}")


@main.command()
@click.option("--load/--no-load", default=True, help="Import each plugin to check it loads (default).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(load: bool, as_json: bool) -> None:
    """List installed plugins: kind, name, distribution, version, status or error."""
    from plmforge.core.registry import Registry

    registry = Registry()
    infos = registry.try_load_all() if load else registry.infos()
    rows = [{"kind": i.kind, "name": i.name, "distribution": i.distribution, "version": i.version,
             "status": i.status, "error": i.error or (f"also claimed by {', '.join(i.claimants)}"
                                                       if i.claimants else None)} for i in infos]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("kind", "name", "distribution", "version", "status")
    for row in rows:
        status = row["status"] if not row["error"] else f"{row['status']} (see below)"
        style = {"loaded": "green", "available": "green", "disabled": "dim"}.get(row["status"], "red")
        table.add_row(row["kind"], row["name"], row["distribution"], row["version"], f"[{style}]{status}[/]")
    Console().print(table)
    for row in rows:  # in full, never cut to the table's width (a piped console is 80 columns)
        if row["error"]:
            click.echo(f"{row['kind']} {row['name']} ({row['distribution']}): {row['status']}: {row['error']}")


@main.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file.")
@click.option("--markdown", is_flag=True, help="The human-readable spec reference instead of JSON Schema.")
def schema(output: Path | None, markdown: bool) -> None:
    """Print the JSON Schema of spec files, including every installed plugin's options."""
    from plmforge.core.schema import spec_json_schema, spec_reference_markdown

    text = spec_reference_markdown().rstrip("\n") if markdown else json.dumps(spec_json_schema(), indent=2)
    if output:
        output.write_text(text + "\n")
        click.echo(f"wrote {output}")
    else:
        click.echo(text)


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("fasta", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output file: .safetensors (per-residue or per-protein) or .npy (per-protein).")
@click.option("--per-protein", is_flag=True, help="Mean over residues: one vector per protein.")
@click.option("--prefix", default=None, help="Task prefix token before each protein, e.g. [NLU].")
@click.option("--backend", "backend_name", default=None, help="Backend to run on (default: the checkpoint's).")
@click.option("--batch-tokens", default=8192, show_default=True, help="Padded tokens per batch.")
def embed(checkpoint: Path, fasta: Path, output: Path, per_protein: bool, prefix: str | None,
          backend_name: str | None, batch_tokens: int) -> None:
    """Encoder embeddings of the proteins in FASTA from CHECKPOINT (drops the </s> position)."""
    from plmforge.core.embedding import embed_fasta

    count = embed_fasta(checkpoint, fasta, output, per_protein=per_protein, prefix=prefix,
                        backend_name=backend_name, batch_tokens=batch_tokens)
    click.echo(f"wrote {'per-protein' if per_protein else 'per-residue'} embeddings of {count} proteins to {output}")


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--prompt", "prompts", multiple=True, metavar="SEQUENCE",
              help="A protein start to complete (repeatable).")
@click.option("--fasta", type=click.Path(dir_okay=False, path_type=Path), help="Prompts from a FASTA file.")
@click.option("--keep", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Prompt with only this share of each sequence and compare the completion with the true rest.")
@click.option("--strategy", type=click.Choice(["greedy", "beam", "sample"]), default="greedy", show_default=True)
@click.option("--beams", default=4, show_default=True, help="Beam width (beam search).")
@click.option("--temperature", default=1.0, show_default=True, help="Softmax temperature (sampling).")
@click.option("--top-k", default=None, type=int, help="Sample only from the k most likely tokens.")
@click.option("--num-samples", default=1, show_default=True, help="Completions per prompt (sampling).")
@click.option("--max-new-tokens", default=256, show_default=True, help="Longest completion in tokens.")
@click.option("--seed", default=0, show_default=True, help="Seed of sampling.")
@click.option("--prefix", default="auto", show_default=True,
              help="Task prefix before each prompt; 'auto' uses [S2S] when the model has it, '' none.")
@click.option("--backend", "backend_name", default=None, help="Backend to run on (default: the checkpoint's).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write completions as FASTA.")
def generate(checkpoint: Path, prompts: tuple[str, ...], fasta: Path | None, keep: float | None, strategy: str,
             beams: int, temperature: float, top_k: int | None, num_samples: int, max_new_tokens: int, seed: int,
             prefix: str, backend_name: str | None, output: Path | None) -> None:
    """Complete protein sequences with CHECKPOINT's decoder (a model trained with `completion`)."""
    from plmforge.core.generation import generate_from_checkpoint, generation_config, sampled_prompts

    named = [(f"prompt{i + 1}", p.strip().upper()) for i, p in enumerate(prompts)]
    if fasta is not None:
        from plmforge.core.data.fasta import read_fasta

        records = read_fasta(fasta)
        named += list(zip(records.ids, records.sequences))
    if not named:
        raise PlmforgeError("nothing to complete: give --prompt SEQUENCE or --fasta FILE")
    named = sampled_prompts(named, num_samples, strategy)
    config = generation_config(strategy=strategy, max_new_tokens=max_new_tokens, beams=beams,
                               temperature=temperature, top_k=top_k, seed=seed)
    results = generate_from_checkpoint(checkpoint, named, config, keep=keep, prefix=prefix or None,
                                       backend_name=backend_name)
    lines = []
    for r in results:
        facts = [f"strategy={strategy}", f"prompt_length={len(r.prompt)}", f"length={len(r.completion.residues)}",
                 f"ended={'yes' if r.completion.ended else 'no'}", f"mean_logprob={r.completion.mean_logprob:.3f}"]
        if r.identity is not None:
            facts.append(f"identity={r.identity:.3f}")
        lines += [f">{r.name} {' '.join(facts)}", r.prompt.lower() + r.completion.residues]
    text = "\n".join(lines) + "\n"
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        click.echo(f"wrote {len(results)} completions to {output} (prompt in lower case, completion in upper case)")
    else:
        click.echo(text, nl=False)
    scored = [r.identity for r in results if r.identity is not None]
    if scored:
        mean = sum(scored) / len(scored)
        click.echo(f"mean identity to the true continuation: {mean:.3f} over {len(scored)} proteins", err=True)


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--to", "target", type=click.Choice(["hf", "plmforge"]), default=None,
              help="Output format. Default: hf for a plmforge checkpoint or run directory, plmforge otherwise.")
@click.option("--force", is_flag=True, help="Replace DEST if it exists and is not empty.")
def convert(source: Path, dest: Path, target: str | None, force: bool) -> None:
    """Convert between a Hugging Face T5 checkpoint directory (e.g. Ankh) and a plmforge checkpoint.

    SOURCE is a Hugging Face directory (config.json + model.safetensors), a plmforge checkpoint or a run
    directory (its latest checkpoint). Nothing is downloaded and nothing is unpickled; see docs/checkpoints.md.
    """
    from plmforge.core.conversion import convert_checkpoint

    done = convert_checkpoint(source, dest, target, force)
    s = done.shape
    layers = f"{s['num_layers']}+{s['num_decoder_layers']} layers" if s["num_decoder_layers"] else \
        f"{s['num_layers']} encoder layers"
    if done.to == "hf":
        click.echo(f"wrote Hugging Face T5 checkpoint {dest} (d_model {s['d_model']}, {layers}, vocabulary "
                   f"{done.vocab_size}) from {done.source}")
        if done.dropped:
            click.echo(f"  left out (not T5 parameters): {', '.join(done.dropped)}")
        model_class = "T5ForConditionalGeneration" if s["num_decoder_layers"] else "T5EncoderModel"
        if done.tokenizer:
            click.echo(f"  load it with transformers: {model_class}.from_pretrained({str(dest)!r}) and "
                       f"AutoTokenizer.from_pretrained({str(dest)!r}) (plmforge's token ids; '</s>' appended)")
        else:
            click.echo(f"  load it with transformers: {model_class}.from_pretrained({str(dest)!r}); no tokenizer "
                       f"files: the tokens of its {done.vocab_size} embedding rows are not known")
    else:
        click.echo(f"wrote plmforge checkpoint {dest} (step 0, d_model {s['d_model']}, {layers}, vocabulary "
                   f"{done.vocab_size}, spec objective {', '.join(done.objectives)}) from {done.source}")
        if done.fresh:
            click.echo(f"  freshly initialised (not in the source): {', '.join(done.fresh)}")
        click.echo(f"  use it with `plmforge embed {dest} ...`, `plmforge evaluate --checkpoint {dest}` or "
                   f"model.init_from: {dest}")


@main.command()
@click.argument("run_ids", nargs=-1, metavar="[RUN_ID]...")
@click.option("-e", "--experiment", "experiments", multiple=True, metavar="NAME",
              help="Compare the top-level runs of this experiment (repeatable). Default: every experiment.")
@click.option("--runs", "runs", multiple=True, metavar="ID",
              help="Compare exactly these runs, in this order: full or short ids (--runs A B, --runs A,B).")
@click.option("-n", "--limit", type=click.IntRange(min=1), default=None, metavar="N",
              help="Only the N most recent top-level runs (of --experiment, or of every experiment).")
@click.option("-m", "--metric", "metrics", multiple=True, metavar="PATTERN",
              help="Metrics to show, fnmatch pattern (repeatable); replaces the default train/loss, val/loss, task/*.")
@click.option("--references", is_flag=True,
              help="Also show the references the runs scored (one-hot, random init, ...) as rows 'reference: <label>' "
                   "in the same task columns, with intervals and marks.")
@click.option("--kind", "kinds", multiple=True, metavar="KIND",
              help="Only top-level runs of this plmforge.kind (repeatable): pretrain, evaluation, ...")
@click.option("--param", "params", multiple=True, metavar="PATTERN",
              help="Param columns to show among those that differ, fnmatch pattern (repeatable; default: all).")
@click.option("--no-params", is_flag=True, help="No param columns.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "markdown"]), default="table", show_default=True,
              help="csv: raw values, intervals in _ci_low/_ci_high columns (no marks); markdown: for docs.")
@click.option("--baseline", default=None, metavar="RUN",
              help="Add rows with each run's difference to this run (full or short id, or reference:<label> with "
                   "--references), with its interval: paired over the same test proteins where both runs saved "
                   "per-protein outcomes.")
@click.option("--replicates", is_flag=True,
              help="Also list the seed replicates under their pooled row (replicates are pooled by default).")
@click.option("--no-group", is_flag=True, help="Do not pool seed replicates: every run is a row of its own.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a PNG of loss curves and downstream task metrics with their intervals.")
@click.option("--tracking-uri", default=None, metavar="URI",
              help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
def compare(run_ids: tuple[str, ...], experiments: tuple[str, ...], runs: tuple[str, ...], limit: int | None,
            metrics: tuple[str, ...], references: bool, kinds: tuple[str, ...], params: tuple[str, ...],
            no_params: bool, fmt: str, baseline: str | None, replicates: bool, no_group: bool, plot: Path | None,
            tracking_uri: str | None) -> None:
    """Runs side by side: differing spec params, final losses, task metrics with intervals; best marked *.

    Rows are top-level runs (pretraining and evaluations); the per-task child runs are summed up in their
    parent's task/* columns. With runs from several experiments an experiment column is added. A task
    metric's best is marked * only where it is significantly better than every other row (paired bootstrap
    over the same test proteins), else the tied cells get ≈. Seed replicates (runs whose specs differ only
    in the seed) are pooled into one row: mean ± sd [interval including the seed spread]. With --references
    the references each run scored are rows below the runs (identical ones once, seed replicates pooled).
    """
    from plmforge.core import compare as comparing
    from plmforge.core.tracking import resolve_tracking_uri

    if no_params and params:
        raise click.UsageError("give either --param or --no-params, not both")
    ids = [i.strip() for value in (*runs, *run_ids) for i in value.split(",") if i.strip()]
    source = comparing.RunSource(resolve_tracking_uri(tracking_uri))
    try:
        selected = source.select(list(experiments), ids, limit, list(kinds))
    except comparing.NoRuns as exc:
        click.echo(str(exc), err=True)
        return
    baseline_id = None
    if baseline is not None and baseline.strip().startswith("reference:"):
        if not references:
            raise click.UsageError("--baseline reference:<label> needs --references")
        baseline_id = baseline.strip()
    elif baseline is not None:
        (base,) = source.select(run_ids=[baseline.strip()])
        baseline_id = base.run_id
        if all(run.run_id != base.run_id for run in selected):
            selected.append(base)
    comparison = comparing.build_comparison(selected, list(metrics) or comparing.DEFAULT_METRICS, references,
                                            outcomes=source.outcomes, baseline=baseline_id, group=not no_group,
                                            replicates=replicates,
                                            params=[] if no_params else list(params) or None)
    if references and not any(run.kind == "reference" for run in comparison.runs):
        click.echo("note: these runs scored no references (evaluation.references)", err=True)
    for pattern in comparison.unmatched if metrics else ():
        click.echo(f"note: no logged metric matches {pattern!r}", err=True)
    if not comparison.metric_columns:
        shown = ", ".join(list(metrics) or comparing.DEFAULT_METRICS)
        children = " (these are per-task child runs: compare their parent runs)" \
            if all(run.kind == "task" for run in selected) else ""
        click.echo(f"note: these runs log none of the metrics shown ({shown}){children}; name others with --metric",
                   err=True)
    for problem in source.problems:
        click.echo(f"note: {problem}", err=True)
    if fmt == "csv":
        click.echo(comparing.render_csv(comparison), nl=False)
    elif fmt == "markdown":
        click.echo(comparing.render_markdown(comparison), nl=False)
    else:
        comparing.render_table(comparison)
    if plot is not None:
        comparing.plot_comparison(comparison, plot, source.history)
        click.echo(f"wrote {plot}", err=True)


@main.command()
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The prepared corpus directory to write (use it as data.source).")
@click.option("--sequence-column", default="sequence", show_default=True, help="Tabular inputs: the sequences.")
@click.option("--id-column", default=None, help="Tabular inputs: protein names (default: the row number).")
@click.option("--label-column", default=None, help="Tabular inputs: a per-protein label to keep.")
@click.option("--cluster-column", default=None, help="Tabular inputs: a cluster id to keep (e.g. UniRef cluster).")
@click.option("--validation-fraction", type=float, default=0.05, show_default=True,
              help="Share held out for validation by sequence hash (identical sequences on one side).")
@click.option("--validation-source", "validation_sources", multiple=True, metavar="FILE",
              help="Take the validation split from these inputs instead (repeatable; globs allowed).")
@click.option("--on-invalid", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="A record with letters outside the vocabulary: stop with its file/line, or skip and count it.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes parsing and encoding chunks; the output is identical for any number.")
@click.option("--overwrite", is_flag=True, help="Replace an existing corpus directory.")
@click.option("--verify-sources", is_flag=True,
              help="Re-read every input at the end and check its sha256 did not change while it was read.")
@click.option("--chunk-mb", type=click.FloatRange(min=0.01), default=16, show_default=True,
              help="Input read per chunk; memory is a few chunks per worker.")
@click.option("--quiet", is_flag=True, help="No progress bar or summary.")
def prepare(sources: tuple[str, ...], output: Path, sequence_column: str, id_column: str | None,
            label_column: str | None, cluster_column: str | None, validation_fraction: float,
            validation_sources: tuple[str, ...], on_invalid: str, workers: int, overwrite: bool,
            verify_sources: bool, chunk_mb: float, quiet: bool) -> None:
    """Convert FASTA (plain/gz/xz/bz2), Parquet, CSV/TSV or a saved datasets folder into a prepared corpus.

    SOURCE may be a glob (quote it); its matches are read sorted. The corpus is a directory of memory-mapped
    numpy/Arrow files and a manifest, opened instantly by a run with data.source: OUTPUT.
    """
    from plmforge.core.data.prepare import prepare_corpus
    from plmforge.core.data.readers import Columns

    try:
        done = prepare_corpus(
            list(sources), output, validation_sources=list(validation_sources),
            columns=Columns(sequence_column, id_column, label_column, cluster_column),
            validation_fraction=validation_fraction, on_invalid=on_invalid, workers=workers, overwrite=overwrite,
            verify_sources=verify_sources, chunk_bytes=int(chunk_mb * (1 << 20)), progress=not quiet)
    except KeyboardInterrupt:
        click.echo("interrupted; nothing was written", err=True)
        sys.exit(130)
    if quiet:
        return
    manifest = done.manifest
    splits = ", ".join(f"{split} {n['proteins']:,} proteins ({n['residues']:,} residues)"
                       for split, n in manifest["splits"].items())
    rate = done.input_bytes / 1e6 / max(done.seconds, 1e-9)
    click.echo(f"wrote {done.path}: {splits}")
    report = manifest["report"]
    click.echo(f"  {report['records_read']:,} records read, {report['skipped_empty']:,} empty and "
               f"{report['skipped_invalid']:,} invalid skipped; {done.input_bytes / 1e6:,.1f} MB in "
               f"{done.seconds:.1f} s ({rate:.1f} MB/s)")
    click.echo(f"  train on it with data.source: {done.path}")


if __name__ == "__main__":  # pragma: no cover
    main()
