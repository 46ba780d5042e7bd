"""The text -> CT + mask pipeline with the default bundle: seconds per case per stage and in total,
and peak RSS, at batch 1 and 8 (each batch size in its own process, so RSS is its own).

    python bench/bench_pipeline.py [--batches 1 8] [--cases 2 8] [--threads 2] [--precision auto]
        [--out bench/results/pipeline.json]

Per configuration: the bundle is loaded (timed apart), then `--cases` prompts are generated in
calls of `batch` cases. Reported per case: stage 1 (`sample_masks`), stage 2
(`SliceGenerator.generate`), what the pipeline adds from prompt to in-memory arrays (abstraction,
island clean-up, upsampling, HU rounding), the findings read-back, and file writing (NIfTI +
findings.json) and previews timed apart. The floor: the pipeline adds at most 10% to the time of
its two sampling calls. Prompts: the six demo reports, cycled.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def worker(batch: int, n_cases: int, precision: str, threads: int) -> dict:
    """Generate n_cases in calls of `batch` cases; timings per case."""
    import tempfile

    import torch

    from pipelines.demo import example_reports
    from pipelines.layouts import Layout
    from pipelines.pipeline import GuideGenPipeline
    from pipelines.prompts import read_prompts
    from pipelines.run import write_case_files
    from shared.io.preview import focus_axial_slices, save_preview
    from shared.runtime import bf16_is_fast

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    pipe = GuideGenPipeline.from_bundle()
    load_s = time.perf_counter() - t0
    cases = read_prompts(example_reports())
    cases = [cases[i % len(cases)] for i in range(n_cases)]
    bf16 = {"auto": None, "bf16": True, "fp32": False}[precision]
    sums = {"stage1": 0.0, "stage2": 0.0, "pipeline": 0.0, "readback": 0.0, "write": 0.0, "preview": 0.0,
            "total": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for s in range(0, n_cases, batch):
            chunk = cases[s : s + batch]
            t0 = time.perf_counter()
            out = pipe([c.findings for c in chunk], [torch.Generator().manual_seed(c.seed) for c in chunk], bf16=bf16)
            sums["total"] += time.perf_counter() - t0
            t = pipe.times
            sums["stage1"] += t.stage1
            sums["stage2"] += t.stage2
            sums["readback"] += t.other.pop("readback", 0.0)
            sums["pipeline"] += t.pipeline
            for case, gen in zip(chunk, out, strict=True):
                t0 = time.perf_counter()
                write_case_files(Layout(Path(tmp)), case, gen, {}, False, pipe.labels.tumor_ids)
                sums["write"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                save_preview(Path(tmp) / f"{case.case_id}.png", gen.ct, gen.labels, gen.affine,
                             axial_slices=focus_axial_slices(gen.labels, pipe.labels.tumor_ids, 4))
                sums["preview"] += time.perf_counter() - t0
    per_case = {k: v / n_cases for k, v in sums.items()}
    sampling = per_case["stage1"] + per_case["stage2"]
    return {"batch": batch, "cases": n_cases, "precision": precision, "threads": threads,
            "bf16": bf16_is_fast(pipe.device) if bf16 is None else bf16,
            "load_s": load_s, "s_per_case": per_case,
            "pipeline_overhead_vs_sampling": per_case["pipeline"] / sampling,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def table(rows: list[dict]) -> str:
    lines = ["| batch | cases | stage 1 s/case | stage 2 s/case | pipeline adds s/case (% of sampling) | "
             "read-back s/case | files s/case | preview s/case | total s/case (prompt -> arrays) | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["s_per_case"]
        lines.append(f"| {r['batch']} | {r['cases']} | {c['stage1']:.2f} | {c['stage2']:.2f} | "
                     f"{c['pipeline']:.3f} ({100 * r['pipeline_overhead_vs_sampling']:.1f}%) | {c['readback']:.3f} | "
                     f"{c['write']:.3f} | {c['preview']:.3f} | {c['total'] - c['readback']:.2f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--cases", type=int, nargs="+", default=None, help="cases per batch size (default: 2, then the batch)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/pipeline.json")
    p.add_argument("--worker", type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker[0], a.worker[1], a.precision, a.threads)))
        return 0
    cases = a.cases or [max(2, b) for b in a.batches]
    rows = []
    for b, n in zip(a.batches, cases, strict=True):
        cmd = [sys.executable, __file__, "--worker", str(b), str(n), "--precision", a.precision,
               "--threads", str(a.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"batch {b}: {rows[-1]['s_per_case']['total']:.1f} s per case", file=sys.stderr)
    import torch

    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpu": cpu_name(), "threads": a.threads,
                          "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__},
              "bundle": "weights/bundle.yaml", "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{result['machine']['cpu']}, {a.threads} threads, precision {a.precision}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
