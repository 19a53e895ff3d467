"""Batch conversion of the catalogue (scripts/convert_all.py).

The parent never imports torch or TensorFlow: every model runs in its own worker process
(`zoo.conversion.worker`), so a crash or an out-of-memory kill fails that model only.
"""
from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tqdm import tqdm

from zoo import catalog, faults
from zoo.constants import CHECKPOINT_SUFFIXES, FORMATS, LEGACY_FORMATS, OK_STATUSES, STAGES
from zoo.export import (
    is_complete,
    manifest,
    parse_formats,
    parse_inference,
    pid_alive,
    recover,
    sha256_file,
    sweep_tmp_files,
    write_json,
    write_text,
)
from zoo.validate import output_summary
from zoo.versions import library_versions
from zoo.worker_env import RSS_LIMIT_FACTOR, rss_limit_mb, share_per_process, worker_env


class BatchError(ValueError):
    """Bad batch arguments (unknown glob, bad shard)."""


def select(only=None, exclude=None, shard=None) -> list[str]:
    """The catalogue names to convert (tagged: `timm/resnet50.a1_in1k`). An --only entry that is
    exactly a bare name (`timm/resnet50`) selects that name itself: its default weights, in
    `<out>/timm/resnet50/`, as `convert timm/resnet50` does."""
    names = catalog.list_models()
    if only:
        bare = sorted(catalog.variants())
        exact = [g for g in only if g in bare and g not in names]
        unmatched = [g for g in only if g not in exact
                     and not any(fnmatch.fnmatchcase(n, g) for n in names)]
        if unmatched:
            close = sorted({c for g in unmatched
                            for c in difflib.get_close_matches(g, names + bare, n=3)})
            raise BatchError(f"--only {unmatched} match(es) no catalogue model"
                             + (f"; did you mean {', '.join(close)}?" if close else ""))
        names = sorted([n for n in names if any(fnmatch.fnmatchcase(n, g) for g in only)] + exact)
    if exclude:
        names = [n for n in names if not any(fnmatch.fnmatchcase(n, g) for g in exclude)]
    if shard:
        k, n = parse_shard(shard)
        # Hash, not position: adding a model to the catalogue does not move the others.
        names = [m for m in names if int(hashlib.sha1(m.encode()).hexdigest(), 16) % n == k - 1]
    return names


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise BatchError(f"--shard must look like K/N, got {text!r}") from None
    if not (n >= 1 and 1 <= k <= n):
        raise BatchError(f"--shard K/N needs 1 <= K <= N, got {text!r}")
    return k, n


def find_checkpoint(weights_dir, name) -> Path | None:
    for suffix in CHECKPOINT_SUFFIXES:
        p = Path(weights_dir) / f"{name}{suffix}"
        if p.is_file():
            return p
    return None


def weights_for(name, weights) -> str:
    if weights in ("auto", "pretrained", "random"):
        return weights
    ckpt = find_checkpoint(weights, name)
    if ckpt is None:
        raise BatchError(f"no checkpoint for {name} in {weights} (looked for "
                         f"{', '.join(name + s for s in CHECKPOINT_SUFFIXES)})")
    return str(ckpt)


def up_to_date(out, name, weights, input_size=None, num_classes=None,
               formats=None, inference=None) -> dict | None:
    """The previous report if outputs are complete and recipe, weights, versions and the export
    formats asked for (written or recorded as skipped) are unchanged."""
    folder = catalog.output_dir(out, name)
    if not is_complete(folder):
        return None
    try:
        report = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        return None
    # Complete-looking is not enough: a truncated or altered file must be converted again.
    files = {k: v for k, v in manifest(folder).items() if k != "report.json"}
    if not report.get("files") or files != report["files"]:
        return None
    variant, _ = catalog.get_variant(name)
    w = report.get("weights", {})
    if weights in ("auto", "pretrained", "random"):
        same_weights = w.get("requested") == weights
    else:
        same_weights = (w.get("checkpoint") or {}).get("sha256") == sha256_file(weights)
    # without --input-size a checkpoint of another geometry is validated at its own size
    # (zoo/conversion/geometry.py), which its report records; otherwise at the recipe's
    own = ((w.get("checkpoint") or {}).get("geometry") or {}).get("input_size") \
        if same_weights and weights not in ("auto", "pretrained", "random") else None
    same_shape = report.get("input_size") == (input_size or own or variant.input_size) and \
        (num_classes is None or report.get("num_classes") == num_classes)
    # a skipped format counts as asked: re-trying it would skip it again
    same_formats = set(report.get("exports") or LEGACY_FORMATS) == set(parse_formats("formats",
                                                                                     formats))
    if report.get("status") == "passed" and report.get("fingerprint") == variant.fingerprint() \
            and same_weights and same_shape and same_formats \
            and (report.get("inference") or {}).get("mode") == inference \
            and report.get("versions") == library_versions():
        return report
    return None


def _summary_row(name, result) -> dict:
    report = result.get("report") or {}
    parity = report.get("parity") or {}
    worst = max((p.get("max_rel", 0.0) for p in parity.values()), default=None)
    per_output = output_summary(parity)
    return {"status": result["status"], "weights": (report.get("weights") or {}).get("source"),
            "max_rel": worst, "top1": per_output["top1"], "outputs": per_output["max_rel"],
            "input_size": report.get("input_size"), "inputs": report.get("inputs"),
            "tolerance": report.get("tolerance"),
            "torch_float32_error": (report.get("torch_float32_vs_float64") or {}).get("max_rel"),
            "seconds": result.get("seconds"),
            # in FORMATS order (report.json's keys are sorted)
            "formats": [f for f in FORMATS if "file" in (report.get("exports") or {}).get(f, {})],
            "skipped": {f: e["skipped"] for f, e in (report.get("exports") or {}).items()
                        if "skipped" in e},
            "bytes": sum(m["bytes"] for m in (report.get("files") or {}).values()) or None,
            "rss_mb": _above(result.get("rss_peak_mb"), result.get("rss_baseline_mb")),
            "parameter_bytes": sum((report.get("parameter_bytes") or {}).values()) or None,
            "error": ((result.get("error") or "").splitlines() or [""])[0][:300] or None,
            "warnings": result.get("warnings") or []}


def _above(peak, baseline):
    return None if peak is None or baseline is None else round(peak - baseline, 1)


def memory_cell(row: dict) -> str:
    """Peak RSS above the worker's import baseline, and the limit it is held to."""
    if row.get("rss_mb") is None:
        return "-"
    limit = row.get("parameter_bytes")
    return f"{row['rss_mb']:.0f}" + ("" if not limit else f" ({rss_limit_mb(limit):.0f})")


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def parity_cell(worst, per_output, spec=".2e") -> str:
    """The worst max rel error; with several outputs, each output's too (by name)."""
    if worst is None:
        return "-"
    if not per_output or len(per_output) < 2:
        return format(worst, spec)
    return f"{worst:{spec}} (" + ", ".join(f"{k} {v:.1e}" for k, v in per_output.items()) + ")"


def input_cell(row: dict, default_size) -> str:
    """The validation input: the size of a one-image model, else each named input's shape."""
    inputs = row.get("inputs") or {}
    if list(inputs) in ([], ["image"]):
        return str(row.get("input_size") or default_size)
    return ", ".join(f"{k} {'x'.join(str(d) for d in shape)}" for k, shape in inputs.items())


def formats_cell(row: dict) -> str:
    """The formats written, then each one skipped with why (a skip is never silent)."""
    cells = list(row.get("formats") or [])
    cells += [f"{fmt} SKIPPED: {why[:160]}".replace("|", "/")
              for fmt, why in (row.get("skipped") or {}).items()]
    return ", ".join(cells) or "-"


def summary_table(rows: dict) -> str:
    lines = ["| model | status | weights | max rel error | top-1 agreement | seconds | "
             "peak MiB (limit) | formats |",
             "|---|---|---|---|---|---|---|---|"]
    for name in sorted(rows):
        r = rows[name]
        status = r["status"] + (f" ({r['error']})" if r.get("error") else "")
        lines.append(f"| {name} | {status} | {r.get('weights') or '-'} | "
                     f"{parity_cell(r.get('max_rel'), r.get('outputs'))} | {_fmt(r.get('top1'), '.3f')} | "
                     f"{_fmt(r.get('seconds'), '.1f')} | {memory_cell(r)} | {formats_cell(r)} |")
    sizes = [r["bytes"] for r in rows.values() if r.get("bytes")]
    if sizes:
        lines.append(f"\nOn disk: {sum(sizes) / 1e9:.2f} GB for the {len(sizes)} models with "
                     "outputs (sizes from each report's file manifest).")
    measured = [r for r in rows.values() if r.get("rss_mb") is not None and r.get("parameter_bytes")]
    if measured:
        within = sum(r["rss_mb"] <= rss_limit_mb(r["parameter_bytes"]) for r in measured)
        lines.append(f"\nPeak memory: each worker's peak RSS above its baseline (torch, TensorFlow, "
                     f"Keras and zoo loaded, TensorFlow's runtime started), against "
                     f"{RSS_LIMIT_FACTOR}x the bytes of both models' parameters: within it for "
                     f"{within} of {len(measured)} models.")
    return "\n".join(lines) + "\n"


class _Worker:
    def __init__(self, name, job, tmpdir, log_dir, out, threads):
        self.name = name
        self.folder = catalog.output_dir(out, name)
        self.timed_out = None
        self.result_path = Path(tmpdir) / f"{abs(hash(name))}.result.json"
        job_path = Path(tmpdir) / f"{abs(hash(name))}.job.json"
        job_path.write_text(json.dumps(job))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / (name.replace("/", "__") + ".log")
        self.log = open(self.log_path, "w")
        self.start = time.perf_counter()
        self.stage = "starting"
        self.proc = subprocess.Popen([sys.executable, "-m", "zoo.conversion.worker", str(job_path),
                                      str(self.result_path)], stdout=subprocess.PIPE,
                                     stderr=self.log, text=True,
                                     env=worker_env(threads, {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("@@stage "):
                self.stage = line.split(None, 1)[1].strip()
            else:
                self.log.write(line)

    def result(self) -> dict:
        self.log.close()
        if self.result_path.is_file():
            return json.loads(self.result_path.read_text())
        recover(self.folder)   # a killed worker leaves its hidden work folder behind
        code = self.proc.returncode
        if self.timed_out is not None:
            why = f"timed out after {self.timed_out:g} s (--timeout); worker killed"
        elif code < 0:
            sig = signal.Signals(-code).name
            why = f"worker killed by {sig}" + (" (out of memory?)" if sig == "SIGKILL" else "")
        else:
            why = f"worker exited with code {code} without a result"
        tail = self.log_path.read_text().strip().splitlines()[-3:]
        return {"name": self.name, "status": "timed out" if self.timed_out else "crashed",
                "error": f"{why}; log {self.log_path}: " + " | ".join(tail),
                "seconds": round(time.perf_counter() - self.start, 2)}


def _sweep_batch_dirs(out: Path) -> None:
    """Remove the job folders of batches whose parent process died (SIGKILL skips cleanup)."""
    for d in out.glob(".batch-*"):
        pid = d.name.split("-")[1]
        if not pid.isdigit() or not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def run_batch(names, weights="auto", jobs=1, out="outputs", resume=False, input_size=None,
              num_classes=None, stream=None, timeout=None, formats=None,
              inference=None) -> tuple[dict, int]:
    """Convert `names`; returns ({name: summary row}, exit code). timeout: seconds per model
    (the worker is killed and the model reported failed; the rest go on). formats: export
    formats (zoo.constants.FORMATS; default DEFAULT_FORMATS); inference: see zoo.convert."""
    formats = list(parse_formats("formats", formats))
    inference = parse_inference("inference", inference, formats)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _sweep_batch_dirs(out)
    sweep_tmp_files(out)
    rows, queue = {}, []
    for name in names:
        recover(catalog.output_dir(out, name))   # debris of interrupted earlier runs
        w = weights_for(name, weights)
        prev = up_to_date(out, name, w, input_size, num_classes, formats, inference) if resume \
            else None
        if prev is not None:
            rows[name] = dict(_summary_row(name, {"status": "passed", "report": prev}),
                              status="up to date", seconds=0.0)
        else:
            queue.append((name, {"name": name, "weights": w, "out": str(out),
                                 "input_size": input_size, "num_classes": num_classes,
                                 "formats": formats, "inference": inference}))
    stream = stream or sys.stderr
    overall = tqdm(total=len(names), desc="models", unit="model", position=0, file=stream,
                   initial=len(rows))
    slots = [tqdm(total=len(STAGES), position=i + 1, leave=False, file=stream,
                  bar_format="  {desc}: {n_fmt}/{total_fmt} stages") for i in range(jobs)]
    running: dict[int, _Worker] = {}
    # --jobs N shares the cores: each worker gets cores // N threads for torch and TensorFlow
    threads = share_per_process(jobs)
    # job/result files live under --out (not /tmp): a killed batch leaves them where the next
    # run sweeps them (the parent's pid tells a dead batch from a concurrent live one)
    with tempfile.TemporaryDirectory(prefix=f".batch-{os.getpid()}-", dir=out) as tmp:
        while queue or running:
            for i in range(jobs):
                if i not in running and queue:
                    name, job = queue.pop(0)
                    running[i] = _Worker(name, job, tmp, out / ".logs", out, threads)
            time.sleep(0.2)
            for i, w in list(running.items()):
                desc = f"{w.name} [{w.stage}]"
                if slots[i].desc != desc:   # redraw on change only: CI logs stay readable
                    slots[i].set_description_str(desc, refresh=False)
                    slots[i].n = STAGES.index(w.stage) if w.stage in STAGES else 0
                    slots[i].refresh()
                if w.proc.poll() is None:
                    if timeout is not None and time.perf_counter() - w.start > timeout:
                        w.timed_out = timeout
                        w.proc.kill()
                        w.proc.wait()
                    else:
                        continue
                result = w.result()
                rows[w.name] = _summary_row(w.name, result)
                for msg in rows[w.name]["warnings"]:
                    if "RANDOM" in msg:
                        tqdm.write(f"WARNING: {msg}", file=stream)
                if result["status"] != "passed":
                    tqdm.write(f"FAILED {w.name}: {rows[w.name]['error']}", file=stream)
                overall.update(1)
                del running[i]
    for bar in slots:
        bar.close()
    overall.close()
    _write_index(out, rows)
    failed = [n for n, r in rows.items() if r["status"] not in OK_STATUSES]
    return rows, (1 if failed else 0)


def _write_index(out: Path, rows: dict) -> None:
    """Merge this run into outputs/index.json (shards and resumed runs accumulate)."""
    index_path = out / "index.json"
    models = {}
    if index_path.is_file():
        try:
            models = json.loads(index_path.read_text()).get("models", {})
        except ValueError:
            models = {}
    for name, row in rows.items():
        # an up-to-date model keeps its recorded row, unless that row says it failed (the run
        # that wrote the folder was killed before it could record the result)
        if row["status"] == "up to date" and models.get(name, {}).get("status") == "passed":
            continue
        models[name] = {k: v for k, v in row.items()}
    faults.point("index_write")
    write_json(index_path, {"models": models})
    write_text(out / "SUMMARY.md", "# Conversion summary\n\n" + summary_table(models))
