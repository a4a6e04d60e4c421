"""The `deidflow` command: de-identify folders, check rules, explain decisions, check the audit trail."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml
from tqdm import tqdm

from . import __version__
from .batch import BatchSummary, DestinationInUse, Limits, ReportLine, iter_inputs, run_batch
from .cloud.services import edge_detector
from .engine import Engine
from .intake import Rejected
from .keys import load_key, parse_key
from .pseudonym import object_ref
from .rules import RulesError, RuleSet, load_rules, parse_yaml
from .rules.research_pacs import convert_research_pacs, looks_like_research_pacs

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # what the command was given (arguments, a rules file, a key) cannot be used
EXIT_SOME_REJECTED = 3
EXIT_WARNINGS = 4  # everything published, some of it on the rules' explicit say-so (see the report)


def laptop_engine(rules: RuleSet, key: bytes) -> Engine:
    """The engine of `deid` and `explain`: a Rekognition detector, when the rules name one, gets its
    client from this machine's AWS configuration (made at the edge, as in the Lambdas)."""
    return Engine(rules, key, detectors=edge_detector)


def _loaded_or_exit(what: str, load: Callable[[], T]) -> T:
    """`load()`, or every line-numbered problem of the `what` file (or why it cannot be read) and
    the usage exit: a rules or profiles file that cannot be used is the caller's to fix."""
    try:
        return load()
    except RulesError as exc:
        print(f"deidflow: the {what} file is not valid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except OSError as exc:
        print(f"deidflow: cannot read the {what} file: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _load_rules_or_exit(path: str | None) -> RuleSet:
    return _loaded_or_exit("rules", lambda: load_rules(path))


def _load_key_or_exit(key_file: str | None) -> bytes:
    try:
        loaded = load_key(key_file)
    except (OSError, ValueError) as exc:
        print(f"deidflow: cannot load the pseudonymisation key: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    if loaded.source.startswith("created:"):
        print(
            f"deidflow: created a new pseudonymisation key at {loaded.source[8:]} - keep it secret, back it "
            "up, and reuse it: the same key gives the same pseudonyms",
            file=sys.stderr,
        )
    return loaded.key


def default_report_path(destination: Path) -> Path:
    # Beside the research folder, not inside it: input paths may themselves carry identifiers.
    return destination.parent / f"{destination.name}.report.jsonl"


def cmd_deid(args: argparse.Namespace) -> int:
    rules = _load_rules_or_exit(args.rules)
    key = _load_key_or_exit(args.key_file)
    destination = Path(args.dst)
    report = Path(args.report) if args.report else default_report_path(destination)
    try:
        total = sum(1 for _ in iter_inputs(args.src))
    except FileNotFoundError as exc:
        print(f"deidflow: {exc}", file=sys.stderr)
        return EXIT_USAGE

    bar = tqdm(total=total, unit="file", desc="de-identifying", disable=args.quiet or None, file=sys.stderr)

    def advance(line: ReportLine) -> None:
        bar.update(1)

    limits = Limits(
        timeout_s=args.timeout, memory_bytes=None if args.memory_limit_mb <= 0 else args.memory_limit_mb * 1024 * 1024
    )
    try:
        summary = run_batch(
            args.src,
            destination,
            rules,
            key,
            jobs=args.jobs,
            report_path=report,
            on_result=advance,
            limits=limits,
            engine=laptop_engine,
        )
    except DestinationInUse as exc:
        bar.close()
        print(f"deidflow: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        bar.close()
        print(f"deidflow: the run failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    bar.close()
    _print_summary(summary, destination, report)
    if summary.rejected:
        return EXIT_SOME_REJECTED
    return EXIT_WARNINGS if summary.warned else EXIT_OK


def _print_summary(summary: BatchSummary, destination: Path, report: Path) -> None:
    duplicates = f", {summary.duplicates} duplicates of others" if summary.duplicates else ""
    print(f"{len(summary.lines)} inputs: {summary.deidentified} de-identified, {summary.rejected} rejected{duplicates}")
    for reason, count in sorted(summary.reasons.items()):
        print(f"  rejected {reason}: {count}")
    for warning, count in sorted(summary.warned.items()):
        print(f"  published with warning {warning}: {count}")
    print(f"research folder: {destination}")
    print(f"report: {report}")


def cmd_rules_check(args: argparse.Namespace) -> int:
    try:
        rules = load_rules(args.file)
    except RulesError as exc:
        for problem in exc.problems:
            print(problem)
        print(f"{args.file}: {len(exc.problems)} problem(s)")
        return EXIT_USAGE
    except OSError as exc:
        print(f"cannot read {args.file}: {exc}")
        return EXIT_USAGE
    options = ", ".join(rules.options.selected()) or "none"
    print(
        f"{args.file}: valid - options: {options}; {len(rules.labels)} label(s), "
        f"{len(rules.transformations)} transformation(s)"
    )
    return EXIT_OK


def cmd_rules_convert(args: argparse.Namespace) -> int:
    try:
        data, index = parse_yaml(Path(args.file).read_text("utf-8"), args.file)
        if not isinstance(data, dict) or not looks_like_research_pacs(data):
            print(f"{args.file}: not a research-pacs de-identifier config")
            return EXIT_USAGE
        converted, _ = convert_research_pacs(data, index, args.file)
        load_rules(args.file)  # report every problem before printing anything
    except RulesError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    print(yaml.safe_dump(converted, sort_keys=False), end="")
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    rules = _load_rules_or_exit(args.rules)
    key = _load_key_or_exit(args.key_file)
    engine = laptop_engine(rules, key)
    try:
        processed = engine.process(args.file, explain=True)
    except Rejected as rejected:
        print(f"{args.file}: rejected - {rejected.reason}: {rejected.detail}")
        return EXIT_SOME_REJECTED
    result = processed.result
    print(f"{args.file}")
    print(f"  rules: {rules.source}; labels: {', '.join(sorted(result.plan.labels))}")
    print(f"  output: {processed.key}")
    pixels = processed.pixels
    if pixels is not None and pixels.boxes:
        boxes = ", ".join(f"[{b.x0}, {b.y0}, {b.x1}, {b.y1}] {b.source}" for b in pixels.boxes)
        print(f"  pixels: boxes filled in every frame: {boxes}")
    for warning in processed.warnings:
        print(f"  warning: {warning}")
    print()
    width = max((len(d.path) for d in result.decisions), default=10)
    kw_width = max((len(d.keyword) for d in result.decisions), default=10)
    print(f"{'ELEMENT':<{width}}  {'KEYWORD':<{kw_width}}  VR  {'ACTION':<28}  DECIDED BY")
    for d in sorted(result.decisions, key=lambda d: d.path):
        print(f"{d.path:<{width}}  {d.keyword:<{kw_width}}  {d.vr:<2}  {d.action:<28}  {d.decided_by}")
    return EXIT_OK


def cmd_local_run(args: argparse.Namespace) -> int:
    """The deployed workflow, run here: what the Step Functions console would show, per object."""
    _load_rules_or_exit(args.rules)  # a bad rules file is a usage error here, not 10 quarantines
    key = _load_key_or_exit(args.key_file)
    sources = [Path(s) for s in args.src]
    missing = [str(s) for s in sources if not s.exists()]
    if missing:
        print(f"deidflow: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        from .local.workflow import run_local
    except ImportError as exc:
        print(f"deidflow: the local workflow needs the 'local' extra ({exc.name} is missing)", file=sys.stderr)
        return EXIT_USAGE
    try:
        run = run_local(
            sources,
            Path(args.dst),
            key,
            project=Path(args.project) if args.project else None,
            rules_file=args.rules,
            text_detector=args.detector,
        )
    except FileNotFoundError as exc:
        print(f"deidflow: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for obj in run.objects:
        print(obj.describe())
    counts: dict[str, int] = {}
    for obj in run.objects:
        counts[obj.status] = counts.get(obj.status, 0) + 1
    print(
        f"{len(run.executions)} execution{'' if len(run.executions) == 1 else 's'} ({run.failed_executions} failed); "
        + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    )
    print(f"research folder: {args.dst} ({len(run.research_files)} instances)")
    if run.failed_executions:
        return EXIT_FAILED
    return EXIT_SOME_REJECTED if counts.get("quarantined") else EXIT_OK


def _backfill_line(counts: dict[str, int]) -> str:
    """One progress line: what `deidflow backfill` prints while it runs, and `backfill-status`."""
    done = counts["published"] + counts["quarantined"] + counts["skipped"]
    return (
        f"{done}/{counts['objects']} processed: {counts['published']} published, {counts['quarantined']} quarantined, "
        f"{counts['skipped']} skipped, {counts['parked']} parked, {counts['stalled']} stalled; "
        f"{counts['remaining']} remaining"
    )


def cmd_backfill(args: argparse.Namespace) -> int:
    """An archive folder through the backfill state machine on this machine (AWS played by moto)."""
    _load_rules_or_exit(args.rules)
    key = _load_key_or_exit(args.key_file)
    source = Path(args.src)
    if not source.is_dir():
        print(f"deidflow: not a folder: {source}", file=sys.stderr)
        return EXIT_USAGE
    try:
        from .local.backfill import LocalBackfill
        from .local.workflow import LocalWorkflow
    except ImportError as exc:
        print(f"deidflow: the local backfill needs the 'local' extra ({exc.name} is missing)", file=sys.stderr)
        return EXIT_USAGE
    import logging

    # moto's interpreter logs, as errors, every JSONPath a Choice asks about and does not find
    # (`IsPresent` false): the backfill's AnyToDo on every batch whose objects are all done.
    logging.getLogger("moto.stepfunctions").setLevel(logging.CRITICAL)
    with LocalWorkflow(
        key,
        project=Path(args.project) if args.project else None,
        rules_file=args.rules,
        text_detector=args.detector,
    ) as workflow:
        # The stack's BackfillConcurrency, as the function reads it (the workflow restores it on exit).
        os.environ["BACKFILL_CONCURRENCY"] = str(args.concurrency)
        backfill = LocalBackfill(workflow)
        started = time.perf_counter()
        keys = backfill.put_archive(source)
        print(f"archive: {len(keys)} files into the local ingest bucket in {time.perf_counter() - started:.1f} s")
        runs = [backfill.run(on_progress=lambda c: print("  " + _backfill_line(c), flush=True))]
        if args.rerun:
            runs.append(backfill.run(run=runs[0].run))
        for n, run in enumerate(runs):
            label = "rerun" if n else "backfill"
            print(f"{label} {run.run}: {run.status}" + (f" ({run.error})" if run.error else ""))
            print("  " + _backfill_line(run.counts))
            skip_rate = run.skipped_as_done / run.counts["objects"] if run.counts["objects"] else 0.0
            print(
                f"  {run.counts['objects']} objects in {run.seconds:.1f} s ({run.objects_per_second:.1f} objects/s); "
                f"{run.submitted} submitted, {run.skipped_as_done} skipped as done ({skip_rate:.0%}), "
                f"{len(run.redrives)} redrive executions"
            )
        files = workflow.download_research(Path(args.dst))
        print(f"research folder: {args.dst} ({len(files)} instances)")
        final = runs[-1]
    if final.status != "SUCCEEDED" or final.counts["remaining"]:
        return EXIT_FAILED
    return EXIT_SOME_REJECTED if final.counts["quarantined"] else EXIT_OK


def cmd_backfill_status(args: argparse.Namespace) -> int:
    """A deployed stack's backfill run, counted from its chunk files and the status table."""
    from .cloud.backfill import progress
    from .portal import outputs_of

    try:
        described = json.loads(Path(args.outputs).read_text("utf-8") if args.outputs != "-" else sys.stdin.read())
        outputs = outputs_of(described)
        bucket, table = outputs["IngestBucketName"], outputs["StatusTableName"]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        print(f"deidflow: backfill-status: {exc}", file=sys.stderr)
        return EXIT_USAGE
    import boto3

    s3, dynamodb = boto3.client("s3"), boto3.client("dynamodb")
    while True:
        counts = progress(s3, dynamodb, table, bucket, args.run)
        print(_backfill_line(counts), flush=True)
        if not args.watch or not counts["remaining"]:
            return EXIT_OK if not counts["remaining"] and not counts["stalled"] else EXIT_FAILED
        time.sleep(args.watch)


def cmd_local_up(args: argparse.Namespace) -> int:
    """A real Orthanc on loopback in front of the local workflow: send studies, watch them come out."""
    _load_rules_or_exit(args.rules)
    key = _load_key_or_exit(args.key_file)
    try:
        from .local.orthanc import LocalOrthanc, OrthancFailed, OrthancNotInstalled
        from .local.workflow import LocalWorkflow
    except ImportError as exc:
        print(f"deidflow: the local front door needs the 'local' extra ({exc.name} is missing)", file=sys.stderr)
        return EXIT_USAGE
    state, destination = Path(args.state), Path(args.dst)
    try:
        with (
            _stopped_by_signals(),
            LocalWorkflow(
                key,
                project=Path(args.project) if args.project else None,
                rules_file=args.rules,
                text_detector=args.detector,
            ) as workflow,
            LocalOrthanc(
                state / "orthanc", state / "drop", http_port=args.http_port, dicom_port=args.dicom_port
            ) as orthanc,
        ):
            print(
                "Orthanc is up on loopback, in front of the local workflow\n"
                f"  DICOMweb (STOW-RS): {orthanc.dicomweb_url}/studies\n"
                f"  DICOM (C-STORE):    {orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
                f", calling AET {orthanc.calling_aet}\n"
                f"  credentials:        {orthanc.state_dir / 'credentials.json'}\n"
                f"  research folder:    {destination}\n"
                "Ctrl-C stops everything.",
                flush=True,
            )
            while orthanc.running:
                if workflow.take_over(orthanc.target_folder):
                    for report in workflow.run_pipe():
                        for obj in report.objects:
                            print(obj.describe(), flush=True)
                    workflow.download_research(destination)
                time.sleep(args.poll)
            print(f"deidflow: Orthanc exited; see {orthanc.log_path}", file=sys.stderr)
            return EXIT_FAILED
    except (OrthancNotInstalled, OrthancFailed, FileNotFoundError) as exc:
        print(f"deidflow: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


def _audit_clients_or_exit(*names: str) -> tuple[Any, ...]:
    """boto3 clients (and the Table resource, as "table") for the audit commands, from this
    machine's AWS configuration; AWS_ENDPOINT_URL points them at a local moto server instead."""
    try:
        import boto3
    except ImportError:
        print("deidflow: the audit commands need boto3 (pip install 'deidflow[cloud]')", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    return tuple(boto3.resource("dynamodb") if name == "dynamodb" else boto3.client(name) for name in names)


def _audit_edge_or_exit() -> Any:
    try:
        from .cloud import audit
    except ImportError as exc:
        print(f"deidflow: the audit commands need the 'cloud' extra ({exc.name} is missing)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    return audit


def _aws_failed(exc: Exception) -> int:
    # AWS's own message names the bucket, table or parameter and what was refused: no PHI in it.
    print(f"deidflow: AWS call failed: {exc}", file=sys.stderr)
    return EXIT_FAILED


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Exit 0 with a summary when the chain is intact; exit 1 with one line per problem otherwise."""
    audit = _audit_edge_or_exit()
    s3, ssm = _audit_clients_or_exit("s3", "ssm")
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        report = audit.verify_bucket(s3, args.bucket, ssm, args.parameter)
    except (ClientError, BotoCoreError) as exc:
        return _aws_failed(exc)
    except ValueError as exc:  # the head parameter holds something that is not a chain head
        print(f"deidflow: {args.parameter}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if report.ok:
        print(report.summary())
        return EXIT_OK
    for problem in report.problems:
        print(problem)
    print(report.summary(), file=sys.stderr)
    return EXIT_FAILED


def cmd_portal_config(args: argparse.Namespace) -> int:
    """The portal's config.json from a deployed stack's outputs."""
    from .portal import outputs_of, portal_config

    try:
        described = json.loads(Path(args.outputs).read_text("utf-8") if args.outputs != "-" else sys.stdin.read())
        config = portal_config(outputs_of(described), viewer=args.viewer)
    except (OSError, ValueError, KeyError, IndexError) as exc:
        print(f"deidflow: portal-config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(config, indent=2))
    return EXIT_OK


def cmd_object_ref(args: argparse.Namespace) -> int:
    """The reference logs and the status table give an ingest object (they never hold its key)."""
    location = args.url
    if not location.startswith("s3://") or "/" not in location[5:] or location.endswith("/"):
        print("deidflow: expected s3://BUCKET/KEY (the key as S3 lists it, not URL-encoded)", file=sys.stderr)
        return EXIT_USAGE
    bucket, key = location[5:].split("/", 1)
    try:
        if args.key_file:
            text = Path(args.key_file).read_text()
        else:
            (secrets,) = _audit_clients_or_exit("secretsmanager")
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                text = secrets.get_secret_value(SecretId=args.secret_id)["SecretString"]
            except (ClientError, BotoCoreError) as exc:
                return _aws_failed(exc)
        ref_key = parse_key(text)
    except (OSError, ValueError) as exc:
        print(f"deidflow: cannot load the object-reference key: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(object_ref(ref_key, bucket, key))
    return EXIT_OK


def _day(value: str) -> str:
    try:
        return datetime.strptime(value, "%Y-%m-%d").strftime("%Y-%m-%d")
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD date: {value!r}") from None


def cmd_audit_query(args: argparse.Namespace) -> int:
    """One JSON line per record, oldest first."""
    audit = _audit_edge_or_exit()
    until = args.until or datetime.now(UTC).strftime("%Y-%m-%d")
    try:
        days = audit.days_between(args.since, until)
    except ValueError as exc:
        print(f"deidflow: {exc}", file=sys.stderr)
        return EXIT_USAGE
    (dynamodb,) = _audit_clients_or_exit("dynamodb")
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        records = audit.query_records(dynamodb.Table(args.table), days=days, sub=args.user, study=args.study)
    except (ClientError, BotoCoreError) as exc:
        return _aws_failed(exc)
    for record in records:
        print(json.dumps(record.to_dict(), sort_keys=True, ensure_ascii=False))
    return EXIT_OK


def _load_profiles_or_exit(path: str, rules_file: str | None) -> Any:
    from .research.profiles import load_profiles

    labels = [name for name, _ in _load_rules_or_exit(rules_file).labels]
    return _loaded_or_exit("profiles", lambda: load_profiles(path, known_labels=labels))


def cmd_profiles_check(args: argparse.Namespace) -> int:
    profiles = _load_profiles_or_exit(args.file, args.rules)
    print(
        f"{args.file}: valid - {len(profiles.profiles)} profile(s), {len(profiles.assignments)} assignment(s); "
        f"version {profiles.version[:12]}"
    )
    return EXIT_OK


def cmd_profiles_explain(args: argparse.Namespace) -> int:
    """How much each profile grants, counted on a research folder's index: counts, never values."""
    from .local.research_folder import FolderIndex
    from .research.profiles import Caller
    from .research.visibility import granted_counts

    profiles = _load_profiles_or_exit(args.file, args.rules)
    index: Any
    if args.index_table:
        if not (args.catalog_table and args.research_bucket):
            print("deidflow: --index-table needs --catalog-table and --research-bucket", file=sys.stderr)
            return EXIT_USAGE
        import boto3

        from .cloud.research_api import DynamoResearchIndex

        index = DynamoResearchIndex(
            boto3.resource("dynamodb"),
            boto3.client("s3"),
            index_table=args.index_table,
            catalog_table=args.catalog_table,
            research_bucket=args.research_bucket,
        )
        where = f"the index table {args.index_table}"
    else:
        try:
            index = FolderIndex(args.research)
        except FileNotFoundError as exc:
            print(f"deidflow: {exc}", file=sys.stderr)
            return EXIT_USAGE
        where = args.research
    today = datetime.now(UTC).date()
    if args.user or args.group:
        caller = Caller(sub="-", username=args.user or "-", groups=frozenset([args.group] if args.group else []))
        chosen = list(profiles.assigned(caller))
        who = f"user {args.user}" if args.user else f"group {args.group}"
    else:
        chosen = [profiles.profiles[name] for name in sorted(profiles.profiles)]
        who = "every profile"
    studies = [index.study_instances(uid) for uid, _ in index.studies()]
    print(f"{who}: counted on {where} ({sum(len(s) for s in studies)} instances)")
    print(f"  {'PROFILE':<24} {'LEVEL':<8} {'STUDIES':>7} {'SERIES':>7} {'INSTANCES':>9}  ACTIONS / STATE")
    for profile in chosen:
        counts = granted_counts([profile], studies)
        state = "active" if profile.active(today) else f"expired {profile.expires}"
        print(
            f"  {profile.name:<24} {profile.level:<8} {counts.studies:>7} {counts.series:>7} {counts.instances:>9}  "
            f"{','.join(sorted(profile.actions))} / {state}"
        )
    if args.user or args.group:
        total = granted_counts([p for p in chosen if p.active(today)], studies)
        print(f"  {'together, today':<33} {total.studies:>7} {total.series:>7} {total.instances:>9}")
        if not chosen:
            print("  no profile is assigned: this caller sees nothing")
    return EXIT_OK


def cmd_local_api(args: argparse.Namespace) -> int:
    """The research API on loopback over a research folder, with local users from the access file."""
    try:
        from .local.api import AccessFile, LocalResearchApi
    except ImportError as exc:
        print(f"deidflow: the local API needs the 'local' extra ({exc.name} is missing)", file=sys.stderr)
        return EXIT_USAGE
    _load_profiles_or_exit(str(_access_profiles(args.access)), args.rules)
    state = Path(args.state) / "api.json"
    viewer_user = None
    if args.ohif:
        users = [u.username for u in AccessFile.load(Path(args.access)).users]
        viewer_user = args.ohif_user or (users[0] if users else None)
        if viewer_user not in users:
            print(f"deidflow: --ohif-user: {args.access} names no user {viewer_user!r}", file=sys.stderr)
            return EXIT_USAGE
    try:
        with (
            _stopped_by_signals(),
            contextlib.ExitStack() as stack,
        ):
            dist = _ohif_dist_or_exit(args.project) if args.ohif else None
            api = stack.enter_context(
                LocalResearchApi(
                    Path(args.research),
                    Path(args.access),
                    project=Path(args.project) if args.project else None,
                    port=args.port,
                )
            )
            api.state().save(state)
            viewer = None
            if dist is not None and viewer_user is not None:
                from .local.ohif import OhifServer

                # The proxy holds the user's token; the browser never sees it.
                viewer = stack.enter_context(
                    OhifServer(
                        dist,
                        upstream=api.dicomweb_url,
                        upstream_authorization=f"Bearer {api.token(viewer_user)}",
                        port=args.ohif_port,
                    )
                )
                api.viewer_url = viewer.url + "/viewer?StudyInstanceUIDs={study}"
            print(
                "the research API is up on loopback\n"
                f"  DICOMweb:  {api.dicomweb_url}\n"
                f"  me:        {api.base_url}/research/me\n"
                f"  portal:    {api.base_url}/portal/ (log in as a local user; cohorts and exports run here)\n"
                f"  users:     {', '.join(sorted(api.passwords))} (deidflow local token USER prints a bearer token)\n"
                f"  serving:   {args.research} ({api.instances} instances"
                + (", indexed here without labels" if api.indexed_here else "")
                + ")\n"
                + (f"  viewer:    {viewer.url}/ (OHIF as {viewer_user})\n" if viewer is not None else "")
                + "Ctrl-C stops it.",
                flush=True,
            )
            logged_in = time.monotonic()
            while True:
                time.sleep(1.0)
                if viewer is not None and viewer_user is not None and time.monotonic() - logged_in > OHIF_RELOGIN:
                    viewer.upstream_authorization = f"Bearer {api.token(viewer_user)}"  # before it expires
                    logged_in = time.monotonic()
    except (FileNotFoundError, ValueError) as exc:
        print(f"deidflow: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        state.unlink(missing_ok=True)


# The viewer's token is an hour's Cognito access token: the proxy logs in again well before that.
OHIF_RELOGIN = 30 * 60.0


def _ohif_dist_or_exit(project: str | None) -> Path:
    """OHIF's dist, fetched with npm once into <project>/.cache/ohif ($DEIDFLOW_OHIF_CACHE)."""
    from .local.ohif import OhifUnavailable, ohif_dist
    from .local.workflow import find_project

    cache = os.environ.get("DEIDFLOW_OHIF_CACHE") or find_project(Path(project) if project else None) / ".cache/ohif"
    try:
        return ohif_dist(Path(cache))
    except OhifUnavailable as exc:
        print(f"deidflow: no OHIF viewer: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _access_profiles(access: str) -> Path:
    try:
        from .local.api import AccessFile

        return AccessFile.load(Path(access)).profiles
    except (OSError, ValueError) as exc:
        print(f"deidflow: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def cmd_local_token(args: argparse.Namespace) -> int:
    from .local.api import LocalState, local_token

    path = Path(args.state) / "api.json"
    try:
        state = LocalState.load(path)
    except FileNotFoundError:
        print(f"deidflow: no local API is running ({path} is missing): start `deidflow local api`", file=sys.stderr)
        return EXIT_USAGE
    try:
        print(local_token(state, args.user))
    except KeyError as exc:
        print(f"deidflow: {exc.args[0]}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """SIGTERM (kill, timeout, systemd, container runtimes) and SIGHUP (a closed terminal) stop
    `local up` the way Ctrl-C does: through every context manager, Orthanc included."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {number: signal.signal(number, stop) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deidflow", description="DICOM de-identification (PS3.15 + rules)")
    parser.add_argument("--version", action="version", version=f"deidflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    deid = sub.add_parser("deid", help="de-identify files or folder trees into DST")
    deid.add_argument("src", nargs="+", help="input files or folders (SRC...)")
    deid.add_argument("dst", help="research folder: studies/<Study>/series/<Series>/instances/<SOP>.dcm")
    deid.add_argument("--rules", help="rules file (default: the built-in Basic profile + modified dates)")
    deid.add_argument(
        "--key-file",
        help="pseudonymisation key file (default: $DEIDFLOW_KEY, then ~/.config/deidflow/key, created on first use)",
    )
    deid.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: CPUs)")
    deid.add_argument("--report", help="JSON-lines report (default: DST.report.jsonl beside DST)")
    deid.add_argument("--quiet", action="store_true", help="no progress bar")
    deid.add_argument(
        "--timeout", type=float, default=600.0, help="seconds one input may take before it is rejected (default: 600)"
    )
    deid.add_argument(
        "--memory-limit-mb",
        type=int,
        default=6144,
        help="memory one worker may add while processing an input (default: 6144; 0: no limit)",
    )
    deid.set_defaults(func=cmd_deid)

    rules = sub.add_parser("rules", help="work with rules files")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_sub.add_parser("check", help="validate a rules file (native or research-pacs)")
    check.add_argument("file")
    check.set_defaults(func=cmd_rules_check)
    convert = rules_sub.add_parser("convert", help="print a research-pacs config as deidflow rules")
    convert.add_argument("file")
    convert.set_defaults(func=cmd_rules_convert)

    explain = sub.add_parser("explain", help="show, per element, the action and the rule or profile row")
    explain.add_argument("file")
    explain.add_argument("--rules")
    explain.add_argument("--key-file")
    explain.set_defaults(func=cmd_explain)

    local = sub.add_parser("local", help="run the AWS workflow on this machine (AWS played by moto)")
    local_sub = local.add_subparsers(dest="local_command", required=True)
    run = local_sub.add_parser(
        "run", help="drop SRC into a local ingest bucket, run the real state machine, fetch the research bucket"
    )
    run.add_argument("src", nargs="+", help="files or folders to drop (SRC...)")
    run.add_argument("dst", help="local folder for the research bucket's studies/ tree")
    run.add_argument("--rules", help="rules file (default: the built-in Basic profile + modified dates)")
    run.add_argument("--key-file", help="pseudonymisation key file (as for deid)")
    run.add_argument("--detector", default="local", help="text detector for burned-in text (default: local OCR)")
    run.add_argument("--project", help="checkout holding template.yaml, statemachines/ and functions/ (default: cwd)")
    run.set_defaults(func=cmd_local_run)
    up = local_sub.add_parser("up", help="start a real Orthanc on loopback in front of the local workflow")
    up.add_argument("dst", nargs="?", default="out/research", help="local research folder (default: out/research)")
    up.add_argument("--state", default=".deidflow-local", help="Orthanc's config, credentials, log and drop folder")
    up.add_argument("--http-port", type=int, default=8042, help="Orthanc's HTTP and DICOMweb port (default: 8042)")
    up.add_argument("--dicom-port", type=int, default=4242, help="Orthanc's DICOM (C-STORE) port (default: 4242)")
    up.add_argument("--poll", type=float, default=1.0, help="seconds between looks at the drop folder")
    up.add_argument("--rules", help="rules file (default: the built-in Basic profile + modified dates)")
    up.add_argument("--key-file", help="pseudonymisation key file (as for deid)")
    up.add_argument("--project", help="checkout holding template.yaml, statemachines/ and functions/ (default: cwd)")
    up.add_argument("--detector", default="local", help="text detector for burned-in text (default: local OCR)")
    up.set_defaults(func=cmd_local_up)

    api = local_sub.add_parser(
        "api", help="serve the research API (DICOMweb) on loopback over a research folder, with local users"
    )
    api.add_argument("research", nargs="?", default="out/research", help="research folder (default: out/research)")
    api.add_argument(
        "--access", default="samples/research/access.yaml", help="users, groups and the profiles file (a YAML file)"
    )
    api.add_argument("--port", type=int, default=8043, help="port on 127.0.0.1 (default: 8043)")
    api.add_argument("--state", default=".deidflow-local", help="where `local token` finds the running API")
    api.add_argument("--rules", help="rules file whose labels the profiles may name (default: the built-in rules)")
    api.add_argument("--project", help="checkout holding template.yaml and functions/ (default: cwd)")
    api.add_argument(
        "--ohif", action="store_true", help="also serve a stock OHIF viewer (npm's, fetched once into .cache/ohif)"
    )
    api.add_argument(
        "--ohif-user", metavar="USER", help="whose token the viewer's proxy sends (default: the access file's first)"
    )
    api.add_argument("--ohif-port", type=int, default=8044, help="the viewer's port on 127.0.0.1 (default: 8044)")
    api.set_defaults(func=cmd_local_api)
    token = local_sub.add_parser("token", help="log a local user in to the running local API; print a bearer token")
    token.add_argument("user")
    token.add_argument("--state", default=".deidflow-local", help="as given to `local api`")
    token.set_defaults(func=cmd_local_token)

    backfill = sub.add_parser(
        "backfill",
        help="backfill an archive folder through the backfill state machine on this machine (AWS played by moto)",
    )
    backfill.add_argument("src", help="the archive: a folder of DICOM files (any layout)")
    backfill.add_argument("dst", help="local folder for the research bucket's studies/ tree")
    backfill.add_argument("--rerun", action="store_true", help="run the same backfill again after it (shows the skip)")
    backfill.add_argument(
        "--concurrency", type=int, default=10, help="batches at once (BackfillConcurrency; default 10)"
    )
    backfill.add_argument("--rules", help="rules file (default: the built-in Basic profile + modified dates)")
    backfill.add_argument("--key-file", help="pseudonymisation key file (as for deid)")
    backfill.add_argument("--detector", default="local", help="text detector for burned-in text (default: local OCR)")
    backfill.add_argument("--project", help="checkout holding template.yaml, statemachines/ and functions/")
    backfill.set_defaults(func=cmd_backfill)
    status_help = "count a deployed stack's backfill run (its chunk files and the status table; AWS credentials)"
    bstatus = sub.add_parser("backfill-status", help=status_help, description=status_help)
    bstatus.add_argument("run", help="the run id the backfill execution was started with")
    bstatus.add_argument("--outputs", required=True, help="`aws cloudformation describe-stacks` JSON ('-': stdin)")
    bstatus.add_argument("--watch", type=float, default=0, metavar="SECONDS", help="print again every SECONDS")
    bstatus.set_defaults(func=cmd_backfill_status)

    profiles = sub.add_parser("profiles", help="the research API's permission profiles")
    profiles_sub = profiles.add_subparsers(dest="profiles_command", required=True)
    pcheck = profiles_sub.add_parser("check", help="validate a profiles file (errors name the line)")
    pcheck.add_argument("file")
    pcheck.add_argument("--rules", help="rules file whose labels the profiles may name (default: the built-in rules)")
    pcheck.set_defaults(func=cmd_profiles_check)
    pexplain = profiles_sub.add_parser(
        "explain", help="how many studies, series and instances each profile grants, on a research folder's index"
    )
    pexplain.add_argument("file")
    pexplain.add_argument("--research", default="out/research", help="research folder (default: out/research)")
    who = pexplain.add_mutually_exclusive_group()
    who.add_argument("--user", help="only the profiles assigned to this Cognito username")
    who.add_argument("--group", help="only the profiles assigned to this Cognito group")
    pexplain.add_argument("--rules", help="rules file whose labels the profiles may name")
    pexplain.add_argument(
        "--index-table",
        help="count on the cloud's index instead (with --catalog-table and --research-bucket; AWS credentials "
        "as for the AWS CLI)",
    )
    pexplain.add_argument("--catalog-table")
    pexplain.add_argument("--research-bucket")
    pexplain.set_defaults(func=cmd_profiles_explain)

    ref_help = (
        "print the reference (obj-...) that logs and the status table give an ingest object: its "
        "status item's object_ref, and the object_ref of its log lines"
    )
    portal_help = (
        "print the researcher portal's config.json from the stack's outputs "
        "(aws cloudformation describe-stacks --stack-name STACK > outputs.json)"
    )
    portal = sub.add_parser("portal-config", help=portal_help, description=portal_help)
    portal.add_argument("outputs", metavar="OUTPUTS.json", help="describe-stacks JSON, or - for stdin")
    portal.add_argument("--viewer", help="a DICOMweb viewer's study URL with {study} in it (e.g. an OHIF deployment)")
    portal.set_defaults(func=cmd_portal_config)
    ref = sub.add_parser("object-ref", help=ref_help, description=ref_help)
    ref.add_argument("url", metavar="s3://BUCKET/KEY")
    ref_key = ref.add_mutually_exclusive_group(required=True)
    ref_key.add_argument("--key-file", help="a file holding the object-reference key (base64 or hex)")
    ref_key.add_argument(
        "--secret-id", help="the stack's ObjectRefKeySecret (AWS credentials and region as for the AWS CLI)"
    )
    ref.set_defaults(func=cmd_object_ref)
    audit_help = (
        "the research API's audit trail (AWS credentials and region as for the AWS CLI; "
        "AWS_ENDPOINT_URL=http://127.0.0.1:5000 points it at a local moto server)"
    )
    audit = sub.add_parser("audit", help=audit_help, description=audit_help)
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify", help="check the sealed segments' hash chain against its head (exit 1 and one line per problem)"
    )
    verify.add_argument("--bucket", required=True, help="the Object Lock bucket holding segments/")
    verify.add_argument("--parameter", required=True, help="the SSM parameter holding the chain head")
    verify.set_defaults(func=cmd_audit_verify)
    query = audit_sub.add_parser("query", help="print the audit records of some days, one JSON line each")
    query.add_argument("--table", required=True, help="the audit DynamoDB table")
    query.add_argument("--since", required=True, type=_day, help="first day, YYYY-MM-DD (UTC)")
    query.add_argument("--until", type=_day, help="last day, YYYY-MM-DD (UTC; default: today)")
    query.add_argument("--user", help="only this user's records (the token's subject)")
    query.add_argument("--study", help="only records that returned or read this Study Instance UID")
    query.set_defaults(func=cmd_audit_query)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "jobs", 1) < 1:
        print("deidflow: --jobs must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except SystemExit as stop:  # raised by the *_or_exit helpers with our exit codes
        return int(stop.code or 0)
    except KeyboardInterrupt:
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - a traceback could quote a header value or a path
        print(f"deidflow: failed ({type(exc).__name__}); details are not shown, they may hold PHI", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
