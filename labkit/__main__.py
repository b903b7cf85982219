"""Command line for the course.

  python -m labkit course [--preset ci|full] [--only 00,02] [-p name=value ...] [--params ci/params.json] [--plan]
  python -m labkit fingerprint [--json]
  python -m labkit report [--single-file] [--out FILE]
  python -m labkit train-tiny [--steps N] [--out DIR]
  python -m labkit serve [--model NAME_OR_PATH] [--int8 METHOD] [--host 127.0.0.1] [--port 8000] [--max-batch N]
                         [--kv-cache-gib G] [--max-body-bytes B] [--shutdown-grace-s S]
  python -m labkit bench --url URL [--model NAME] [--rate R] [--requests N] [--prompt-len N] [--output-len LO,HI]
                         [--vocab-size V | --text] [--timeout S] [--max-concurrency N]
  python -m labkit peers [--shape tinyllama-1.1b] [--layers 8] [--prompt-len 512] [--new-tokens 32] [--repeats 3]
                         [--labkit bf16,int4-rtn+compile,...] [--check] [--profile] [--no-memory]
  python -m labkit advise [--model NAME|PATH] [--users N] [--ttft-ms X] [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _course(args) -> int:
    from labkit.core.params import ParamError
    from labkit.course import plan as course_plan
    from labkit.course.runner import CourseError, course_plan_for, load_params_file, parse_param, run_course

    try:
        params = load_params_file(args.params) if args.params else {}
        params.update(dict(parse_param(p) for p in args.param))
        if "preset" in params:
            raise ParamError("give the preset with --preset, not as a parameter")
        if args.plan:
            print("\n".join(course_plan_for(args.preset, args.only, params, args.reports).lines()))
            return 0
        run = run_course(args.preset, args.only, params, args.reports)
    except (CourseError, ParamError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = [r for r in run.runs if r.error]
    print(course_plan.summary_line(run.runs))
    from labkit.core.records import reports_dir

    print(f"report: {(Path(args.reports) if args.reports else reports_dir()) / 'index.html'}")
    return 1 if failed else 0


def _length(text: str) -> int | tuple[int, int]:
    """'128' or a range '16,256' (uniform, inclusive), as labkit.serve.workload.make_trace takes them."""
    parts = [p for p in text.replace(":", ",").split(",") if p.strip()]
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LO,HI (integers), got {text!r}") from None
    if len(vals) == 1:
        return vals[0]
    if len(vals) == 2:
        return vals[0], vals[1]
    raise argparse.ArgumentTypeError(f"expected N or LO,HI, got {text!r}")


def _serve(args) -> int:
    from labkit.core.params import ParamError, resolve_device

    for name, value, lo in (("--max-batch", args.max_batch, 1), ("--port", args.port, 0),
                            ("--max-body-bytes", args.max_body_bytes, 1)):
        if value is not None and value < lo:
            print(f"error: {name} must be >= {lo}, got {value}", file=sys.stderr)
            return 2
    if args.kv_cache_gib is not None and not args.kv_cache_gib > 0:
        print(f"error: --kv-cache-gib must be > 0, got {args.kv_cache_gib}", file=sys.stderr)
        return 2
    if not 0 <= args.shutdown_grace_s < float("inf"):
        print(f"error: --shutdown-grace-s must be a number of seconds >= 0, got {args.shutdown_grace_s}",
              file=sys.stderr)
        return 2
    from labkit.core import models
    from labkit.serve import api
    from labkit.serve.engine import LLMEngine

    try:
        device = resolve_device(args.device)
        model = models.load(args.model, dtype=args.dtype, device=device, layers=args.layers, seed=args.seed)
        if args.int8:
            from labkit.techniques.quant import INT8_METHODS, QuantSkipped, quantize

            if args.int8 not in INT8_METHODS:
                raise ParamError(f"unknown --int8 method {args.int8!r}; choose one of {list(INT8_METHODS)}")
            try:
                model = quantize(model, args.int8, inplace=True)
            except QuantSkipped as e:
                print(f"error: --int8 {args.int8} cannot run here: {e}", file=sys.stderr)
                return 2
        try:
            tokenizer = models.load_tokenizer(args.model)
        except (models.ModelError, OSError, ValueError) as e:
            tokenizer = None
            print(f"no tokenizer ({str(e).split(';')[0]}): prompts must be lists of token ids", file=sys.stderr)
        engine = LLMEngine(model, api.engine_config(args.max_batch, args.kv_cache_gib, args.max_model_len, args.seed))
    except (models.ModelError, ParamError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = args.served_model_name or args.model
    sched = engine.scheduler.config
    print(f"serving {name!r} on {device}{f' ({args.int8})' if args.int8 else ''}: up to {sched.max_num_seqs} requests "
          f"at once, KV cache {sched.num_blocks} blocks of {sched.block_size} tokens, context {sched.max_model_len}",
          flush=True)
    try:
        api.serve(api.create_app(engine, name, tokenizer, max_body_bytes=args.max_body_bytes), args.host, args.port,
                  log_level=args.log_level, parent_pid=args.parent_pid, shutdown_grace_s=args.shutdown_grace_s)
    except OSError as e:  # the port is taken, or the host is not this machine's
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    return 0


def _bench_problem(args) -> str | None:
    """What is wrong with `bench`'s options, in one sentence, or None: checked before anything is sent."""
    import math

    lengths = [("--prompt-len", args.prompt_len), ("--output-len", args.output_len)]
    for name, value in lengths:
        lo, hi = (value, value) if isinstance(value, int) else value
        if lo < 1 or hi < lo:
            return f"{name} must be N >= 1 or LO,HI with 1 <= LO <= HI, got {lo if lo == hi else f'{lo},{hi}'}"
    ints = [("--requests", args.requests, 1), ("--max-concurrency", args.max_concurrency, 1),
            ("--vocab-size", args.vocab_size, 4), ("--seed", args.seed, 0)]
    for name, value, lo in ints:
        if value is not None and value < lo:
            extra = " (leave it out for no limit)" if name == "--max-concurrency" else ""
            return f"{name} must be >= {lo}, got {value}{extra}"
    floats = [("--rate", args.rate), ("--burstiness", args.burstiness), ("--timeout", args.timeout),
              ("--slo-ttft-ms", args.slo_ttft_ms), ("--slo-tpot-ms", args.slo_tpot_ms)]
    for name, value in floats:
        if value is not None and not (math.isfinite(value) and value > 0):
            return f"{name} must be a number > 0, got {value:g}"
    return None


def _bench(args) -> int:
    from labkit.core import records
    from labkit.serve import client as bench_http
    from labkit.serve.workload import make_trace

    try:
        problem = _bench_problem(args)
        base = bench_http.check_url(args.url)
    except ValueError as e:
        problem = str(e)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    config = {"url": base, "model": args.model, "requests": args.requests, "rate": args.rate,
              "burstiness": args.burstiness, "prompt_len": args.prompt_len, "output_len": args.output_len,
              "seed": args.seed, "timeout_s": args.timeout, "max_concurrency": args.max_concurrency,
              "fingerprint_is": "the machine that ran the client"}
    try:
        info = bench_http.probe(base, args.model, timeout_s=args.timeout, prompt="Hello" if args.text else None)
    except bench_http.ServerUnreachable as e:
        rec = records.save("bench_http", config, {"sent": 0, "completed": 0, "failed": args.requests,
                                                  "errors": {str(e): args.requests}})
        print(f"error: {e}; no request was sent, all {args.requests} counted failed (record: {rec['_path']})",
              file=sys.stderr)
        return 1
    try:
        vocab, note = bench_http.token_prompts(info, args.text, args.vocab_size)
        bench_http.check_fits(info, args.prompt_len, args.output_len)
        tokenizer = None
        if vocab is None:
            from labkit.core.models import load_tokenizer

            tokenizer = load_tokenizer()
        arrival = "all-at-once" if args.rate is None else ("gamma" if args.burstiness != 1.0 else "poisson")
        trace = make_trace(args.requests, prompt_len=args.prompt_len, output_len=args.output_len, arrival=arrival,
                           rate=args.rate, burstiness=args.burstiness, vocab_size=vocab or 32000, seed=args.seed,
                           tokenizer=tokenizer)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in (info["note"], note):
        if line:
            print(f"note: {line}")
    extra = {} if args.no_length_fields else info["extra"]
    replay = bench_http.run(base, info["model"], trace, tokenizer=tokenizer, extra=extra, timeout_s=args.timeout,
                            max_concurrency=args.max_concurrency, progress=True)
    slo = {k: v for k, v in (("ttft", args.slo_ttft_ms), ("tpot", args.slo_tpot_ms)) if v is not None}
    summary = replay.summary(slo_ms=slo or None)
    print(replay.describe())
    for key in ("request_throughput", "output_throughput", "goodput", "ttft_median_ms", "ttft_p99_ms",
                "tpot_median_ms", "tpot_p99_ms", "itl_median_ms", "itl_p99_ms", "e2e_median_ms", "e2e_p99_ms"):
        if summary.get(key) is not None:
            print(f"  {key:<20} {summary[key]:>12,.2f}")
    prompts = "text" if vocab is None else f"token ids in [3, {vocab})"
    rec = records.save("bench_http", {**config, "model": info["model"], "prompts": prompts, "extra_fields": extra},
                       summary)
    print(f"record: {rec['_path']}")
    return 0 if not summary["failed"] else 1


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    """A bad option ends in one line naming it (argparse's default prints the whole usage first)."""
    def error(message: str):
        parser.exit(2, f"error: {message} (see {parser.prog} --help)\n")

    parser.error = error


def _peers(args) -> int:
    import pandas as pd

    from labkit.core import floors, models, planner, records
    from labkit.lessons import peer_runtimes, peer_verdicts, peers

    paths, chosen = peer_runtimes.default_paths()
    if args.labkit:
        paths, chosen = tuple(p.strip() for p in args.labkit.split(",") if p.strip()), "chosen by --labkit"
    bad = [p for p in paths if p not in peers.KNOWN_PATHS]
    if (bad or args.layers < 1 or args.prompt_len < 1 or args.new_tokens < 2 or args.repeats < 1
            or args.batch == 1 or args.batch < 0 or args.batch_prompt_len < 1):
        why = (f"unknown labkit path(s) {bad}; choose from {list(peers.KNOWN_PATHS)}" if bad else
               "--layers, --prompt-len, --batch-prompt-len and --repeats must be >= 1, --new-tokens >= 2 and "
               "--batch 0 (none) or >= 2")
        print(f"error: {why}", file=sys.stderr)
        return 2
    try:
        models.shape(args.shape)
    except models.ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"labkit paths: {', '.join(paths)} ({chosen})")
    for engine in peers.INSTALL:
        why = peers.missing(engine)
        print(f"{engine}: {'ready' if not why else why}")
    if args.check:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            got = peers.check_tokens(models.load(), models.load_tokenizer(), "def main(args):\n    ", 24, d)
        for engine, res in got.items():
            if engine != "reference":
                print(f"same greedy tokens as transformers ({engine}): {res}")
    if args.profile:
        for name, rows in peers.profile(args.shape, args.layers, paths).items():
            print(f"\n{name}: one decode step, kernel by kernel (torch.profiler, self CPU time)")
            print(pd.DataFrame(rows).round(3).to_string(index=False))
        return 0
    hw, source = planner.machine_card("cpu")
    table, rounds = peers.compare(args.shape, args.layers, args.prompt_len, args.new_tokens, args.repeats,
                                  labkit=paths, hw=hw, hw_source=source, measure_memory=not args.no_memory,
                                  batch=args.batch, batch_prompt=args.batch_prompt_len)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
        shown = table.drop(columns=[c for c in ("engine", "batching gain rounds") if c in table])
        print(floors.shown(shown).round(3).to_string(index=False))
    for line in floors.reasons(table, "path"):  # every floor a path beat, and why (labkit.core.floors)
        print(line)
    print(f"floors: {hw.bandwidth_gbps:.1f} GB/s from {source}; {table.attrs['threads']} thread(s); load: "
          f"{table.attrs['load']}")
    if "peak MiB" in table:
        from labkit.lessons import peer_memory

        print(peer_memory.NOTE)
    if table.attrs.get("batch"):
        from labkit.lessons import peer_batch

        print(peer_batch.note(table.attrs["batch"], table.attrs["batch_prompt"], table.attrs["new_tokens"]))
    lines = peer_verdicts.target_lines(rounds, table)
    print("\n".join(lines))
    config = {k: table.attrs[k] for k in ("shape", "layers", "prompt_len", "new_tokens", "threads", "batch",
                                          "batch_prompt")}
    rec = records.save(peers.EXPERIMENT, {**config, "repeats": args.repeats, "roofline_source": source},
                       {"table": table.to_dict("records"), "targets": lines, "load": table.attrs["load"]})
    print(f"record: {rec['_path']}")
    return 0


def _advise(args) -> int:
    from labkit.core import models
    from labkit.core.models import ModelError
    from labkit.course import advise

    try:
        advice = advise.advise(args.model, args.users, args.ttft_ms)
    except (ModelError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(advice.lines))
    if not args.check:
        return 0
    if "tpot_ms" not in advice.choice:
        print("check not run: there is no pick to run (see above for the records that make one)")
        return 1
    from labkit.course import advise_check

    spec = advice.spec
    source = args.model if args.model and spec.name not in models.SHAPES else spec.name
    lines, _ = advise_check.check(advice.choice, spec, source, repeats=args.repeats)
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m labkit", description="The local-LLM speed course's tools.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("course", help="execute the notebooks headlessly into reports/")
    c.add_argument("--preset", default="ci", help="ci (small, fast; default) or full (realistic sizes)")
    c.add_argument("--only", default=None, help="comma-separated notebook ids, e.g. 00,02")
    c.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a notebook parameter (value read as JSON when it parses)")
    c.add_argument("--params", type=Path, default=None, help="JSON file of parameters (e.g. ci/params.json)")
    c.add_argument("--reports", type=Path, default=None, help="output folder (default: reports/)")
    c.add_argument("--plan", action="store_true",
                   help="print the plan (this machine's kind, each lesson's expected time here) and run nothing")
    f = sub.add_parser("fingerprint", help="print this machine's features that decide LLM speed")
    f.add_argument("--json", action="store_true")
    r = sub.add_parser("report", help="rebuild reports/index.html from what is in reports/")
    r.add_argument("--single-file", action="store_true",
                   help="also write one self-contained HTML (figures embedded) to send to someone")
    r.add_argument("--out", type=Path, default=None, help="where the single file goes (default: reports/)")
    t = sub.add_parser("train-tiny", help="retrain the embedded model (it is committed; ~40 min on 2 cores)")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--out", type=Path, default=None)
    s = sub.add_parser("serve", help="an OpenAI-compatible HTTP server over labkit's engine (127.0.0.1 by default)")
    s.add_argument("--model", default="stdlib-llama-16m",
                   help="the embedded model (default), a shape name (llama-2-7b, ...) or a model folder")
    s.add_argument("--layers", type=int, default=None, help="decoder layers of a shape model (default 2)")
    s.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")
    s.add_argument("--int8", default=None, metavar="METHOD",
                   help="quantize the linear layers first with one of quant.INT8_METHODS (e.g. int8-dynamic)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed)")
    s.add_argument("--max-batch", type=int, default=None,
                   help="most requests running at once (default: the engine's, EngineConfig.max_num_seqs)")
    s.add_argument("--kv-cache-gib", type=float, default=None,
                   help="memory for the paged KV cache (default: the engine's, labkit.serve.config.EngineConfig)")
    s.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    s.add_argument("--served-model-name", default=None, help="the name clients pass as `model` (default --model)")
    s.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies are refused (413)")
    s.add_argument("--shutdown-grace-s", type=float, default=5.0,
                   help="on SIGTERM or Ctrl+C: new requests get 503, running ones get this long to finish, the rest "
                        "end with an error event (a second signal stops at once)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)  # stop when it is gone
    b = sub.add_parser("bench", help="replay a request trace against an OpenAI-compatible server; print and record "
                                     "TTFT, TPOT, ITL, E2E, throughput")
    b.add_argument("--url", required=True, help="the server's base URL, e.g. http://127.0.0.1:8000")
    b.add_argument("--model", default=None, help="the model name to ask for (default: the server's first)")
    b.add_argument("--requests", type=int, default=32)
    b.add_argument("--rate", type=float, default=None, help="requests/s, Poisson arrivals (default: all at once)")
    b.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of the arrival gaps (1 = Poisson)")
    b.add_argument("--prompt-len", type=_length, default=512, help="tokens per prompt: N or LO,HI")
    b.add_argument("--output-len", type=_length, default=128, help="tokens per answer: N or LO,HI")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--vocab-size", type=int, default=None,
                   help="token-id prompts are drawn from [3, this) (default: the vocabulary the server states in "
                        "/v1/models; text prompts when it states none)")
    b.add_argument("--text", action="store_true",
                   help="send text prompts (held-out text via the embedded tokenizer) instead of token-id lists; "
                        "for servers that take no token ids (Ollama)")
    b.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a connection or the next chunk")
    b.add_argument("--max-concurrency", type=int, default=None,
                   help="most requests in flight at once (default: no limit)")
    b.add_argument("--no-length-fields", action="store_true",
                   help="do not send ignore_eos / min_tokens (then output lengths are the server's)")
    b.add_argument("--slo-ttft-ms", type=float, default=None)
    b.add_argument("--slo-tpot-ms", type=float, default=None)
    _one_line_errors(b)
    pe = sub.add_parser("peers", help="labkit's batch-1 paths next to llama.cpp, CTranslate2, OpenVINO GenAI and "
                                      "ONNX Runtime GenAI (when installed) on one shape, timed side by side")
    pe.add_argument("--shape", default="tinyllama-1.1b", help="a shape name (labkit.core.models.SHAPES)")
    pe.add_argument("--layers", type=int, default=8)
    pe.add_argument("--prompt-len", type=int, default=512)
    pe.add_argument("--new-tokens", type=int, default=32)
    pe.add_argument("--repeats", type=int, default=3)
    pe.add_argument("--batch", type=int, default=8,
                    help="also time each runtime that batches serving this many requests at once (0: do not)")
    pe.add_argument("--batch-prompt-len", type=int, default=64, help="the prompt length of those requests")
    pe.add_argument("--labkit", default=None,
                    help="labkit paths to time, comma-separated (default: all where the CPU has bf16 and int8 matrix "
                         "units, else fp32,int8-dynamic-legacy,int4-rtn)")
    pe.add_argument("--check", action="store_true",
                    help="first check that each peer computes the same model (greedy tokens of the embedded one)")
    pe.add_argument("--profile", action="store_true",
                    help="instead of timing: where each --labkit path's decode step spends its time, op by op")
    pe.add_argument("--no-memory", action="store_true",
                    help="skip the memory columns (each row reopened in a process of its own after the rounds)")
    ad = sub.add_parser("advise", help="what to run here: runtime, number format, batching and the expected TTFT / "
                                        "TPOT / throughput, from this machine's records (never a guess)")
    ad.add_argument("--model", default=None,
                    help="a shape name or a model folder (default: the shape notebook 02 measured)")
    ad.add_argument("--users", type=int, default=1, help="users at once (more than 1: batching decides)")
    ad.add_argument("--ttft-ms", type=float, default=None, help="a time-to-first-token target, ms")
    ad.add_argument("--check", action="store_true",
                    help="then run the pick once on the model at full depth and print predicted against measured "
                         "(minutes; refused when the model would not fit in memory here)")
    ad.add_argument("--repeats", type=int, default=3, help="rounds of the --check run")
    _one_line_errors(ad)
    args = ap.parse_args(argv)

    if args.cmd == "course":
        if args.preset not in ("ci", "full"):
            ap.error(f"unknown preset {args.preset!r}; choose ci or full")
        return _course(args)
    if args.cmd == "fingerprint":
        from labkit.core.hardware import describe, fingerprint

        fp = fingerprint()
        print(json.dumps(fp, indent=2) if args.json else describe(fp))
        return 0
    if args.cmd == "report":
        from labkit.course.report import write_index, write_single_file

        print(write_index())
        if args.single_file:
            print(write_single_file(out=args.out))
        return 0
    if args.cmd == "serve":
        return _serve(args)
    if args.cmd == "bench":
        return _bench(args)
    if args.cmd == "peers":
        return _peers(args)
    if args.cmd == "advise":
        return _advise(args)
    if args.cmd == "train-tiny":
        from labkit import DATA
        from labkit.core.train_tiny import TinyRecipe, train

        r = TinyRecipe() if args.steps is None else TinyRecipe(steps=args.steps)
        train(r, args.out or DATA / "models" / r.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
